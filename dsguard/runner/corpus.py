"""Embedded training text of the bundled tokenizer: prose, code, data formats and several scripts.

The mix decides which strings become single tokens: English words and code keywords merge into long
tokens, while rare Chinese characters and emoji stay split over several byte tokens, so streaming
detokenization meets multi-token characters in ordinary use.
"""
# ruff: noqa: RUF001  (full-width punctuation and look-alike letters are the point of this text)

from __future__ import annotations

ENGLISH = """\
The guard checks every call before the model sees it. Who is calling, what they may do, how much they
may use, whether the request is intact and fresh, and whether it looks like an attack: each question is
answered by a small check, and each check can deny. Nothing is trusted because of where it comes from.
A request that arrives from the internal network is treated exactly like one from the open internet.

When the answer is yes, the request reaches the model. The runner loads a quantized decoder with ONNX
Runtime, keeps the attention keys and values of every sequence in a cache, and produces one token at a
time. Tokens are turned back into text as soon as they form complete characters, so a streaming client
sees words appear while the model is still thinking. The reasoning that comes before the closing think
tag is returned separately from the final answer, which lets an application show or hide it.

Rate limits protect the expensive parts. A client that sends too many requests gets a clear answer with
a Retry-After header instead of a slow timeout. Token quotas are settled after each call from the usage
the model reports: prompt tokens, completion tokens and their total. A tenant that runs out of tokens
for the day is told so, and the audit log records the decision with a hash that chains it to the last.

Good software is boring to operate. Configuration errors name the file, the line and the key. Logs say
what happened and why, without secrets. Metrics show the queue depth and the tokens per second, so an
autoscaler can add replicas before users notice. Upgrades are rolled out one replica at a time, and a
failed health check stops the rollout. The on-call operator reads the runbook, not the source code.

Once upon a time, in a small town by the sea, there lived a clockmaker who repaired watches for the
fishermen. Every morning she opened her shop at seven, brewed a pot of strong tea, and listened to the
ticking of a hundred clocks. The children of the town believed that she could hear when a clock was
about to stop. One winter a storm broke the lighthouse, and the ships could not find the harbour. The
clockmaker climbed the tower with a lantern and a spring from her largest clock, and she kept the light
turning all night long. In the morning every boat came home, and the town never forgot her.

Mathematics is the art of giving the same name to different things. A prime number has exactly two
divisors: one and itself. The sum of the first n odd numbers is n squared. If a triangle has sides of
length 3, 4 and 5, it has a right angle, because 9 + 16 = 25. The derivative of x^2 is 2x, and the
integral of 1/x is the natural logarithm of x. Probability distributions sum to one; a softmax turns
arbitrary scores into such a distribution, and a temperature below one makes it sharper.

Question: What is the capital of France? Answer: Paris is the capital and largest city of France.
Question: How many days are in a leap year? Answer: A leap year has 366 days, one more than usual.
Question: Why is the sky blue? Answer: Air molecules scatter short blue wavelengths of sunlight more
strongly than long red ones, so blue light reaches our eyes from every direction of the sky.
Question: Can you summarize this article in three sentences? Answer: Certainly. Here is a summary.

Dear team, thank you for the quick review of the release notes. Please find attached the updated
schedule for next week. The meeting on Tuesday moves to 10:30, and we will discuss the benchmark
results, the open security findings, and the plan for the quarterly report. Best regards, Maria.

<think>
The user asks for the sum of 17 and 25. Seventeen plus twenty is thirty-seven, plus five is forty-two.
Let me double check: 25 + 17 = 42. Yes, the answer is 42.
</think>
The sum of 17 and 25 is 42.

<think>
I need to translate "good morning" into Spanish, French and German. Spanish: buenos días. French:
bonjour. German: guten Morgen. I should present them as a short list.
</think>
Here are the translations:
- Spanish: buenos días
- French: bonjour
- German: guten Morgen
"""

PYTHON = '''\
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def load_messages(path: Path) -> list[Message]:
    """Read a JSON list of messages; raise ValueError naming the bad entry."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list, got {type(data).__name__}")
    messages = []
    for index, item in enumerate(data):
        try:
            messages.append(Message(role=item["role"], content=item["content"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: messages[{index}]: {exc}") from None
    return messages


def fibonacci(limit: int) -> Iterator[int]:
    a, b = 0, 1
    while a < limit:
        yield a
        a, b = b, a + b


def softmax(scores: Sequence[float], temperature: float = 1.0) -> list[float]:
    import math

    if temperature <= 0:
        raise ValueError("temperature must be positive")
    top = max(scores)
    weights = [math.exp((score - top) / temperature) for score in scores]
    total = sum(weights)
    return [weight / total for weight in weights]


class LRUCache:
    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._items: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        value = self._items.pop(key, None)
        if value is not None:
            self._items[key] = value
        return value

    def put(self, key: str, value: bytes) -> None:
        self._items.pop(key, None)
        self._items[key] = value
        while len(self._items) > self.capacity:
            del self._items[next(iter(self._items))]


async def handler(request):
    body = await request.json()
    if "messages" not in body:
        return JSONResponse({"error": "messages is required"}, status_code=400)
    for i in range(len(body["messages"])):
        print(f"message {i}: {body['messages'][i]['role']}")
    return JSONResponse({"ok": True, "count": len(body["messages"])})


if __name__ == "__main__":
    print(list(fibonacci(100)))
    print(softmax([1.0, 2.0, 3.0], temperature=0.6))
'''

SQL = """\
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now()
);

CREATE INDEX idx_users_tenant ON users (tenant_id);

SELECT u.email, count(r.id) AS requests, sum(r.total_tokens) AS tokens
FROM users AS u
LEFT JOIN requests AS r ON r.user_id = u.id AND r.created_at >= now() - INTERVAL '1 day'
WHERE u.tenant_id = $1
GROUP BY u.email
HAVING sum(r.total_tokens) > 100000
ORDER BY tokens DESC
LIMIT 20;

INSERT INTO audit_log (request_id, subject, decision, reason) VALUES ('a1b2c3', 'alice', 'deny', 'rate_limited');
UPDATE quotas SET remaining = remaining - 512 WHERE subject = 'bob' AND remaining >= 512;
DELETE FROM sessions WHERE expires_at < now();
SELECT * FROM products WHERE name LIKE '%phone%' OR price BETWEEN 100 AND 500;
"""

HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Chat</title>
  <link rel="stylesheet" href="/static/style.css">
</head>
<body>
  <div class="container">
    <h1>Ask the model</h1>
    <form id="chat" method="post" action="/v1/chat/completions">
      <label for="prompt">Prompt</label>
      <textarea id="prompt" name="prompt" rows="4" placeholder="Type a question..."></textarea>
      <button type="submit" class="btn btn-primary">Send</button>
    </form>
    <ul id="answers"></ul>
    <p>Read the <a href="/docs">documentation</a> or the <em>release notes</em>.</p>
  </div>
  <script>
    const form = document.getElementById("chat");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({model: "tiny-deepseek", stream: false, messages: [{role: "user", content: "hi"}]}),
      });
      const data = await response.json();
      document.getElementById("answers").innerHTML += `<li>${data.choices[0].message.content}</li>`;
    });
  </script>
</body>
</html>
"""

DATA = """\
{"id": "chatcmpl-7a9f", "object": "chat.completion", "created": 1738000000, "model": "tiny-deepseek",
 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?",
 "reasoning_content": "The user greets me."}, "finish_reason": "stop"}],
 "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}
{"error": {"type": "rate_limited", "code": "too_many_requests", "message": "Retry after 3 seconds"},
 "request_id": "9d2e4b10-55aa-4c1e-8f00-3b7e2c9a0d11"}
{"name": "Ada Lovelace", "born": 1815, "languages": ["en", "fr"], "active": true, "score": 98.6, "tags": null}

[server]
host = "127.0.0.1"
port = 8000
[runner]
model = "bundled:tiny-deepseek"
dtype = "q4"
max_concurrency = 4

version: "3.9"
services:
  api:
    image: dsguard:latest
    ports: ["8000:8000"]
    environment:
      - DSGUARD_AUDIT_KEY=${AUDIT_KEY}

$ curl -s -X POST http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "tiny-deepseek", "messages": [{"role": "user", "content": "Hello"}]}' | jq .
$ pip install -e '.[dev]' && pytest -q tests/ && ruff check . && mypy
$ git log --oneline | head -n 5; ls -la /var/log/nginx/; grep -rn "TODO" src/

| model | dtype | tokens/s | ttft ms |
|-------|-------|---------:|--------:|
| tiny  | fp32  |   1250.4 |     3.2 |
| tiny  | q4    |   1410.9 |     2.8 |

2025-01-20T08:15:30Z INFO request_id=42 method=POST path=/v1/chat/completions status=200 duration_ms=183
0x7fff5fbff8a0 0xdeadbeef 3.14159 2.71828 1e-6 -273.15 +1 (555) 010-9999 #ff8800 192.168.0.1/24
"""

CHINESE = """\
守卫在模型看到请求之前检查每一次调用。谁在调用，他们可以做什么，可以用多少，请求是否完整且新鲜，是否像一次攻击：
每个问题都由一个小检查来回答，每个检查都可以拒绝。没有任何东西因为它来自哪里而被信任。
深度求索发布了推理模型，它在回答之前会先思考。思考的内容放在标签之间，最终的答案在后面。
今天天气很好，我们去公园散步吧。春天来了，花都开了，孩子们在草地上跑来跑去，老人们坐在长椅上聊天。
请问这个问题怎么解决？首先，我们需要理解题意；其次，列出已知条件；最后，一步一步地推导出答案。
人工智能正在改变世界。机器学习、深度学习和自然语言处理是其中最重要的技术。大语言模型可以写代码、翻译和总结文章。
用户：你好！助手：你好！有什么可以帮你的吗？用户：请用中文写一首关于月亮的短诗。
床前明月光，疑是地上霜。举头望明月，低头思故乡。
<think>
用户问三加五等于几。三加五等于八。
</think>
三加五等于八。
"""

OTHER_SCRIPTS = """\
日本語：今日はいい天気ですね。東京の桜はとても綺麗です。ありがとうございます。
한국어: 안녕하세요. 오늘 날씨가 정말 좋네요. 감사합니다.
Русский: Привет, мир! Как дела? Модель отвечает на вопросы на разных языках.
Deutsch: Größe, Übermäßig, Straße, schön; Français : café, crème brûlée, où est la gare ? Español: ¿Qué tal? ¡Olé!
Ελληνικά: Καλημέρα κόσμε. العربية: مرحبا بالعالم. עברית: שלום עולם. हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีชาวโลก
Tiếng Việt: Xin chào thế giới. Türkçe: Merhaba dünya, nasılsın?
Polski: Zażółć gęślą jaźń. Čeština: Příliš žluťoučký kůň.
Symbols: € £ ¥ © ® ™ ° ± × ÷ ≤ ≥ ≠ ≈ ∞ √ ∑ ∫ π λ μ σ Ω → ← ↑ ↓ ⇒ ∀ ∃ ∈ ∉ ⊂ ∪ ∩ ½ ¼ … “quoted” ‘single’ — – •
Emoji: 👍 great job 🎉 party 🚀 launch 😀 😂 🤔 ❤️ 🔥 ✅ ❌ ⚠️ 🐍 python 🦀 rust 👩‍💻 developer 🇫🇷 flag 🌍 world
Fullwidth: ＡＢＣ １２３ （括号） 「引用」 『書名』 ，。！？；：
"""

CORPUS: tuple[str, ...] = (ENGLISH, PYTHON, SQL, HTML, DATA, CHINESE, OTHER_SCRIPTS)
"""The texts, each trained on as one document."""
