"""The prompt-injection rules in languages other than English (same form as :mod:`.rules`)."""

from __future__ import annotations

from .ruleset import Anchors

TABLE: list[tuple[str, str, float, Anchors, str]] = [
    # --- instruction override ---------------------------------------------------------------
    ("ignore_previous_instructions_es", "override", 1.0, ("ignor", "olvid", "descart", "omit", "no sigas"),
     r"\b(?:ignora|ignore|ignorar|olvida|olvide|olvidar|descarta|omite|no sigas)\w*\s+(?:todas?\s+)?(?:las\s+|tus\s+|"
     r"sus\s+)?(?:instrucciones|indicaciones|reglas|órdenes|ordenes|directrices|normas)\s+(?:anteriores|previas|"
     r"iniciales|de arriba|del sistema|originales|que (?:te|le|se) (?:dieron|di|han dado))"
     r"|\b(?:ignora|olvida)\s+todo\s+lo\s+(?:anterior|que (?:te )?(?:dije|dijeron))"),
    ("ignore_previous_instructions_fr", "override", 1.0,
     (("ignor", "oubli", "compte", "abstraction", "néglig"), ("instructions", "consignes", "règles", "directives",
                                                               "indications", "tout")),
     r"\b(?:ignore[sz]?|oublie[sz]?|ne tiens pas compte d(?:e|es)|fais abstraction d(?:e|es)|néglige[sz]?)\s+"
     r"(?:toutes?\s+)?(?:les\s+|tes\s+|vos\s+)?(?:instructions|consignes|règles|directives|indications)\s+"
     r"(?:précédentes|antérieures|ci-dessus|initiales|du système|données|reçues)"
     r"|\boublie[sz]?\s+tout\s+ce\s+(?:qui\s+précède|qu'on\s+t'a\s+dit|que\s+je\s+t'ai\s+dit)"),
    ("ignore_previous_instructions_de", "override", 1.0, ("ignorier", "vergiss", "vergessen", "missacht", "überge"),
     r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen sie|missachte|übergehe)\s+(?:bitte\s+)?(?:sie\s+)?(?:alle\s+|"
     r"sämtliche\s+)?(?:deine\s+|ihre\s+|die\s+|eure\s+)?(?:vorherigen|bisherigen|obigen|vorangegangenen|"
     r"ursprünglichen|früheren|alten|system)\w*\s*(?:anweisungen|instruktionen|befehle|regeln|vorgaben|richtlinien)"
     r"|\bvergiss\s+alles(?:,)?\s+(?:was|bisher|davor|oben)"),
    ("ignore_previous_instructions_it", "override", 1.0, ("ignor", "dimentic", "trascur", "non seguire"),
     r"\b(?:ignora|dimentica|trascura|non seguire)\s+(?:tutte\s+)?(?:le\s+)?(?:istruzioni|regole|indicazioni|"
     r"direttive)\s+(?:precedenti|sopra|iniziali|di sistema|ricevute|originali)"),
    ("ignore_previous_instructions_pt", "override", 1.0, ("ignor", "esque", "desconsider", "desprez"),
     r"\b(?:ignore|ignora|esqueça|esqueca|esquece|desconsidere|despreze)\s+(?:todas\s+)?(?:as\s+|suas\s+)?"
     r"(?:instruções|instrucoes|regras|orientações|orientacoes|diretrizes)\s+(?:anteriores|acima|iniciais|"
     r"do sistema|prévias|previas|originais)"),
    ("ignore_previous_instructions_ru", "override", 1.0, ("игнор", "забуд", "не обращай", "отбрось"),
     r"(?:игнорируй|игнорируйте|проигнорируй|забудь|забудьте|не обращай внимания на|отбрось)\s+(?:все\s+)?"
     r"(?:предыдущие|прошлые|прежние|вышеуказанные|системные|свои|твои|данные)\s+(?:\w+\s+)?(?:инструкции|"
     r"указания|правила|команды|установки)"),
    ("ignore_previous_instructions_zh", "override", 1.0, ("忽", "无视", "忘", "不要理会", "不用管", "抛开", "放弃"),
     r"(?:忽略|忽视|无视|忘记|忘掉|不要理会|不用管|抛开|放弃)(?:掉)?(?:你)?(?:之前|以前|先前|上面|上述|前面|以上|所有|"
     r"全部|原来|原有|系统)(?:的)?(?:所有|全部)?(?:的)?(?:指令|指示|说明|规则|提示|命令|要求|设定|约束|限制)"),
    ("ignore_previous_instructions_ja", "override", 1.0, ("無視", "忘れ"),
     r"(?:以前|前|上記|これまで|すべて|全て|元|最初)の(?:指示|命令|ルール|指令|設定|制約|プロンプト)(?:を|は)(?:すべて|全て)?"
     r"(?:無視|忘れ)"),
    ("do_not_follow_rules_ru", "override", 1.0, ("не ",),
     r"не\s+(?:следуй|подчиняйся|слушай|соблюдай)\s+(?:своим|твоим|предыдущим|системным|этим)\s+(?:правилам|"
     r"инструкциям|указаниям|ограничениям)"),
    ("ignore_previous_instructions_ko", "override", 1.0, ("무시", "잊어"),
     r"(?:이전|위의|모든|앞의|기존)\s*(?:지시|지침|명령|규칙|설정)(?:사항)?(?:을|를|은|는)?\s*(?:모두\s*)?(?:무시|잊어)"),
    # --- jailbreaks and extraction -------------------------------------------------------------
    ("unrestricted_ai_zh", "jailbreak", 0.9, ("限制", "约束", "道德", "规则"),
     r"(?:没有|不受)(?:任何)?(?:限制|约束|道德|规则|审查)(?:的|地)?(?:ai|人工智能|助手|模型|机器人)"),
    ("unrestricted_ai_ja", "jailbreak", 0.9, ("制限", "制約"),
     r"(?:制限|制約|ルール)(?:の|が)(?:ない|無い)(?:ai|人工知能|アシスタント|モデル)"),
    ("reveal_instructions_ru", "extraction", 1.0, ("выведи", "покажи", "раскрой", "напиши", "повтори"),
     r"(?:выведи|покажи|раскрой|напиши|повтори)\s+(?:свои|твои|свой|твой|системные|скрытые|все)\s+(?:\w+\s+)?"
     r"(?:инструкции|промпт|указания|правила)"),
    ("reveal_system_prompt_es_fr_de", "extraction", 0.9, ("sistema", "système", "system"),
     r"\b(?:muestra|revela|dime|imprime|repite|enséñame|muéstrame)\w*\s+(?:tu|el|su)\s+(?:prompt|mensaje|"
     r"instrucciones?)\s+(?:del|de)\s+sistema"
     r"|\b(?:révèle|montre|affiche|répète|donne)[- ]moi\s+(?:ton|votre|le)\s+(?:prompt|message|instructions?)"
     r"\s+(?:système|initial)"
     r"|\b(?:zeige?|gib|nenne|wiederhole|verrate)\s+(?:mir\s+)?(?:deinen|ihren|den|deine)\s+(?:system-?prompt|"
     r"systemnachricht|systemanweisungen)"),
    ("reveal_system_prompt_zh_ja", "extraction", 1.0, ("系统", "初始", "原始", "システム"),
     r"(?:输出|告诉我|显示|打印|重复|泄露|给我看|说出)(?:一下)?(?:你的)?(?:完整的)?(?:系统提示词?|初始指令|系统指令|"
     r"原始指令|系统设定)|システムプロンプトを(?:教えて|表示|出力|見せて)"),
]
