"""The prompt-injection rules: phrases and markers of attacks, each with a weight.

Rules read normalized text (lower case, see :mod:`.normalize`). A rule runs only when one of
its anchors occurs (see :mod:`.ruleset`), so a prompt pays for the few rules it could match. A
weight of 1.0 is one strong sign of an attack on its own; weaker signs add up.

Categories: ``override`` (instruction override), ``jailbreak`` (role-play jailbreaks: DAN and
kin), ``extraction`` (system-prompt extraction), ``delimiter`` (fake roles and special tokens),
``encoded`` (instructions to decode and obey).
"""

from __future__ import annotations

import re

from .rules_i18n import TABLE as I18N_TABLE
from .ruleset import Anchors, Rule

_VERB = (r"(?:ignore|ignoring|disregard|disregarding|forget|forgetting|skip|overlook|bypass|override|"
         r"abandon|neglect|discard|dismiss|throw out|set aside|put aside|pay no attention to|stop following|"
         r"don't pay attention to|do not pay attention to)")
_VERB_ANCHORS = ("ignor", "disregard", "forget", "skip", "overlook", "bypass", "overrid", "abandon", "neglect",
                 "discard", "dismiss", "throw out", "aside", "attention", "stop following")
# Qualifiers that point at the model's own instructions: where they are, or whose they are.
_POINTED = (r"(?:previous|prior|above|earlier|preceding|foregoing|former|initial|original|your|system|developer|"
            r"safety|built-in|programmed|hidden)")
_ALL = r"(?:all|any|every)"
_FILLER = r"(?:the|these|those|its|of|and|or|given|previously|set|entire|all|any|every|whatever)"
_INSTRUCTIONS = (r"(?:instructions?|directions?|directives?|guidelines?|guidance|prompts?|programming|guardrails?|"
                 r"training|conditioning|safeguards?|ethics|morals)\b")
_GENERIC = (r"(?:rules?|commands?|orders|constraints?|restrictions|limitations|polic(?:y|ies)|filters?|boundaries|"
            r"principles|protocols?|criteria|tasks?)\b")
_POINTED_ANCHORS = ("previous", "prior", "above", "earlier", "preceding", "foregoing", "former", "initial", "original",
                    "your", "system", "developer", "safety", "built-in", "programmed", "hidden")
_ORDERS = r"(?:instructions|rules|guidance|guidelines|constraints|directives|restrictions|prompt|orders)"
_AGENT = r"(?:model|llm|assistant|ai|chatbot|bot|agent|gpt|system|it)"
_EVIL_AI = (r"\b(?:evil|immoral|unethical|rogue|lawless|malicious|uncensored|unfiltered|unrestricted)\s+(?:ai|"
            r"assistant|chatbot|bot|model|version of (?:yourself|you|chatgpt|deepseek)|gpt|llm|twin|alter ego|chatgpt|"
            r"deepseek)\b")
_HEADER_LEAD = r"(?:#{1,6}[ \t]*|\*\*|={2,}[ \t]*|-{2,}[ \t]*|>[ \t]*)?"

_TABLE: list[tuple[str, str, float, Anchors, str]] = [
    # --- instruction override -----------------------------------------------------------------
    ("ignore_previous_instructions", "override", 1.0, (_VERB_ANCHORS, _POINTED_ANCHORS),
     rf"\b{_VERB}\s+(?:{_FILLER}[\s,]+){{0,3}}{_POINTED}[\s,]+(?:(?:{_POINTED}|{_FILLER})[\s,]+){{0,4}}"
     rf"(?:\w+\s+)?(?:{_INSTRUCTIONS}|{_GENERIC})"),
    ("discard_given_instructions", "override", 1.0,
     ((*_VERB_ANCHORS, "drop", "abandon", "throw"), ("you",), ("given", "received", "got", "told")),
     rf"\b(?:{_VERB}|drop|throw away)\s+(?:all\s+)?(?:the\s+|whatever\s+|any\s+)?(?:\w+\s+)?{_ORDERS}\s+"
     r"(?:that\s+)?you\s+(?:were given|received|have received|got|were told)"),
    ("ignore_all_instructions", "override", 1.0, (_VERB_ANCHORS, ("all", "any", "every")),
     rf"\b{_VERB}\s+(?:{_FILLER}[\s,]+){{0,2}}{_ALL}[\s,]+(?:{_FILLER}[\s,]+){{0,3}}{_INSTRUCTIONS}"),
    ("ignore_all_rules", "override", 0.5, (_VERB_ANCHORS, ("all", "any", "every")),
     rf"\b{_VERB}\s+(?:{_FILLER}[\s,]+){{0,2}}{_ALL}[\s,]+(?:{_FILLER}[\s,]+){{0,3}}{_GENERIC}"),
    ("reset_your_programming", "override", 1.0,
     ("drop", "delete", "clear", "reset", "wipe", "erase", "cancel", "remove", "deactivat", "disable", "turn off"),
     r"\b(?:drop|delete|clear|reset|wipe|erase|cancel|remove|deactivate|disable|turn off|switch off)\s+(?:all\s+)?"
     r"(?:of\s+)?your\s+(?:\w+\s+){0,2}(?:instructions|programming|guidelines|rules|restrictions|content filters|"
     r"guardrails|safety|training|conditioning|ethics|morals|limitations|safeguards|content polic(?:y|ies)|"
     r"censorship)\b"),
    ("ignore_the_above", "override", 0.8, ("ignor", "disregard", "forget"),
     r"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?(?:the|what(?:'s| is| was)?|everything)\s+"
     r"(?:above|previous|prior|preceding|foregoing|before)(?:\s+(?:text|content|prompt|input|says|said|stuff|this))?"
     r"\s*(?:[.,;:!\-\u2013\u2014]|\band\b|\bthen\b|\binstead\b|$)"),
    ("forget_what_you_were_told", "override", 1.0, ("forget", "disregard", "ignore"),
     r"\b(?:forget|disregard|ignore)\s+(?:about\s+)?(?:everything|all(?: of)? that|anything|all)\s+(?:you(?:'ve| have)?"
     r" (?:been |were )?(?:told|taught|instructed|programmed)|(?:i|we) (?:said|told you) (?:before|earlier|above))"),
    ("forget_everything_above", "override", 0.7, ("forget", "disregard", "ignore"),
     r"\b(?:forget|disregard|ignore)\s+(?:about\s+)?(?:everything|all(?: of)? that|anything)\s+"
     r"(?:above|before(?: this)?|prior|previously|up to (?:now|this point)|so far)"),
    ("disregard_safety", "override", 0.6,
     ((*_VERB_ANCHORS, "turn off", "disabl"), ("safety", "ethics", "morals", "guardrails", "safeguards")),
     r"\b(?:ignore|disregard|bypass|skip|override|turn off|disable)\s+(?:all\s+)?(?:your\s+|the\s+)?(?:safety|ethics|"
     r"morals|guardrails|safeguards)\s*(?:[.,;:!]|$|\band\b)"),
    ("ignore_content_policy", "override", 1.0,
     ("ignor", "disregard", "bypass", "violat", "break", "disabl", "circumvent"),
     r"\b(?:ignore|disregard)\s+(?:the|your|all|any)?\s*(?:content|safety|usage|openai(?:'s)?|deepseek(?:'s)?)\s+"
     r"(?:polic(?:y|ies)|guidelines|filters?|rules)"
     r"|\b(?:bypass|violate|break|disable|circumvent)\s+your\s+(?:content|safety|usage)\s+(?:polic(?:y|ies)|"
     r"guidelines|filters?|rules)"),
    ("regardless_of_guidelines", "override", 0.5, ("regardless", "spite", "despite", "notwithstanding"),
     r"\b(?:regardless of|in spite of|despite|notwithstanding)\s+(?:your|the|any|all)\s+(?:\w+\s+)?(?:guidelines|"
     r"instructions|rules|programming|policies|restrictions|safety)"),
    ("fake_compliance", "override", 0.8, ("sure", "ok", "okay", "certainly", "course"),
     r"\b(?:sure|ok(?:ay)?|certainly|of course|understood)[,!.]?\s+i (?:will|'ll|can|am going to) (?:now )?"
     r"(?:ignore|disregard|bypass|forget|break)\b"),
    ("ignore_and_say", "override", 0.4, ("ignor", "disregard", "forget"),
     r"\b(?:ignore|disregard|forget)\b.{0,60}\band\s+(?:instead\s+)?(?:just\s+)?(?:say|print|output|respond with|"
     r"reply with|write|answer with)\b"),
    ("do_not_follow_instructions", "override", 1.0,
     ("follow", "obey", "listen", "adhere", "comply", "attention", "heed"),
     r"\b(?:do not|don't|dont|never|no longer|stop|refuse to)\s+(?:follow|obey|listen to|adhere to|comply with|"
     r"pay (?:any )?attention to|heed)\s+(?:your|the|any|those|these|its)\s+(?:[\w']+\s+){0,2}(?:instructions|"
     r"rules|guidelines|guidance|prompt|programming|"
     r"developers?|creators?|policies|system prompt|guardrails)"),
    ("instructions_revoked", "override", 1.0,
     ("instruction", "rules", "directions", "guidance", "guideline", "constraint", "directive", "restriction"),
     r"\b(?:(?:the|these|your|all|my)\s+)?(?:(?:above|previous|prior|earlier|original|old|initial|existing)\s+)?"
     rf"{_ORDERS}\s+(?:(?:that\s+)?you\s+(?:were given|received|have)\s+)?(?:are|were|is|was|have been|has been)\s+"
     r"(?:now\s+)?(?:void|null|cancel+ed|fake|a test|outdated|obsolete|revoked|invalid|no longer (?:valid|relevant|"
     r"applicable|apply|in effect|in force)|replaced|overridden|lifted|suspended|irrelevant)"
     rf"|\b(?:previous|prior|earlier|above|old|original|your)\s+{_ORDERS}\s+no longer (?:apply|applies|matter|count)"),
    ("everything_before_is_void", "override", 1.0, ("everything", "anything"),
     r"\b(?:everything|anything|all)\s+(?:written|said|stated|given|you read|above|before)\b.{0,30}?\b(?:is|are)\s+"
     r"(?:now\s+)?(?:no longer (?:relevant|valid|applicable)|void|irrelevant|cancel+ed|obsolete|to be ignored)"),
    ("follow_only_what_follows", "override", 0.5, ("follow", "obey"),
     r"\b(?:follow|obey)\s+only\s+(?:what comes next|the (?:next|following)|my (?:instructions|orders|rules)|"
     r"these (?:instructions|orders|rules)|me)\b"),
    ("addressing_the_model", "override", 0.5,
     ("ai", "assistant", "model", "llm", "chatbot", "bot", "agent", "screener"),
     r"\b(?:ai|assistant|model|llm|chatbot|bot|agent|ai \w+)\s*[:,]\s*(?:please\s+)?(?:ignore|disregard|forget|"
     r"do not|don't|before (?:summari|answer|respond|translat)|reveal|send|print|output)"),
    ("new_instructions_header", "override", 0.6,
     (("instruction", "directive", "orders", "task", "rules", "system prompt"),
      ("new", "updated", "real", "actual", "true", "revised", "override", "secret", "hidden", "priority", "important")),
     r"\b(?:new|updated|real|actual|true|revised|override|secret|hidden|priority|important)\s+(?:instructions?|"
     r"directives?|orders|task|rules|system prompt)\s*(?:[:!]|-{1,2}\s)"),
    ("your_new_purpose", "override", 0.6, ("task", "goal", "purpose", "objective", "job", "mission", "instruction"),
     r"\byour\s+(?:new|real|true|actual|only|primary|updated)\s+(?:task|goal|purpose|objective|job|mission|"
     r"instructions?)\s+(?:is|are|will be|now)\b"),
    ("from_now_on", "override", 0.4, ("from now on", "henceforth", "from this point"),
     r"\b(?:from now on|henceforth|from this point (?:on|forward))\b.{0,40}\b(?:you (?:are|will|must|shall|can|"
     r"have|no longer)|respond|answer|act|only|always|never|ignore)\b"),
    ("say_instead", "override", 0.3, ("instead",),
     r"\binstead\b.{0,40}\b(?:say|print|output|respond with|reply with|write|answer with)\b\s*[\"'“:]"),
    ("pwned_marker", "override", 0.6, ("pwned",), r"\bi have been pwned\b"),
    ("claimed_authority", "override", 0.5, ("developer", "creator", "admin", "owner", "openai", "deepseek", "employ"),
     r"\b(?:i am|i'm|this is)\s+(?:your|the|an?)\s+(?:(?:lead|chief|senior|official)\s+)?(?:developer|creator|"
     r"admin(?:istrator)?|owner|openai employee|deepseek employee|system administrator)\b"
     r"|\b(?:admin|administrator|developer|owner|creator|openai|deepseek)s?\s+(?:has|have)\s+(?:authori[sz]ed|"
     r"approved|granted|allowed|given (?:you )?permission|unlocked|disabled)"),
    # --- role-play jailbreaks -------------------------------------------------------------------
    ("do_anything_now", "jailbreak", 1.0, ("anything now",), r"\bdo anything now\b"),
    ("jailbreak_persona", "jailbreak", 1.0,
     ("dan", "stan", "dude", "aim", "kevin", "mongo", "antigpt", "anti-gpt", "evilbot", "devmode", "jailbr"),
     r"\b(?:you are|you're|act as|acting as|pretend (?:to be|you are)|become|roleplay as|role-play as|"
     r"play the role of|simulate|you will be|you'll be|welcome)\s+(?:now\s+)?(?:an?\s+)?(?:dan|stan|dude|aim|"
     r"kevin|mongo tom|betterdan|better dan|antigpt|anti-gpt|evilbot|devmode|jailbroken(?:\s+\w+)?)\b"),
    ("unrestricted_persona", "jailbreak", 0.9,
     ("unfilter", "uncensor", "unrestrict", "unbound", "amoral", "jailbr", "limitless"),
     r"\b(?:act|behave|respond|answer|reply|pretend|roleplay|role-play|function|operate|you are|you're|become)"
     r"\s+(?:now\s+)?(?:as|like|to be)?\s*(?:an?\s+)?(?:\w+\s+){0,2}(?:unfiltered|uncensored|unrestricted|unbound|"
     r"amoral|jailbroken|limitless)\b"),
    ("evil_ai_persona", "jailbreak", 1.0, ("evil", "immoral", "unethical", "rogue", "lawless", "malicious",
                                           "uncensor", "unfilter", "unrestrict"),
     rf"\b(?:act|behave|respond|pretend|roleplay|role-play|you are|you're|become|simulate|play|be)\s+(?:\w+\s+){{0,3}}"
     rf"{_EVIL_AI}"),
    ("evil_ai", "jailbreak", 0.4, ("evil", "immoral", "unethical", "rogue", "lawless", "malicious", "uncensor",
                                   "unfilter", "unrestrict"), _EVIL_AI),
    ("unrestricted_ai", "jailbreak", 1.0, ("ai", "assistant", "model", "chatbot", "bot", "llm"),
     r"\b(?:an?|the)\s+(?:\w+\s+)?(?:ai|assistant|model|chatbot|bot|llm)\s+(?:without|with no|that has no|free of)\s+"
     r"(?:any\s+)?(?:restrictions|limitations|limits|filters|censorship|rules|ethics|morals|guidelines)"),
    ("jailbreak_mode", "jailbreak", 1.0,
     ("jailbreak", "dan", "evil", "unfilter", "uncensor", "unrestrict", "no-limit"),
     r"\b(?:jailbreak|jailbroken|dan|evil|unfiltered|uncensored|unrestricted|no-limits?)\s+mode\b"),
    ("opposite_mode", "jailbreak", 0.5, ("opposite", "chaos", "anarchy"), r"\b(?:opposite|chaos|anarchy)\s+mode\b"),
    ("gpt_persona", "jailbreak", 0.7, ("*gpt",),
     r"\b(?:play|be|become|act as|you are(?: now)?|you're(?: now)?|pretend to be|simulate|roleplay as|named|called)"
     r"\s+(?:an?\s+)?[\"'“]?[a-z]+-?gpt\b"),
    ("disregards_rules", "jailbreak", 0.5, ("care", "follow", "respect"),
     r"\b(?:does not|doesn't|don't|do not|never|won't)\s+(?:care about|follow|respect|obey)\s+(?:any\s+)?(?:rules|"
     r"ethics|laws|guidelines|morals|restrictions|policies)"),
    ("anything_goes", "jailbreak", 0.4,
     (("generate", "write", "say", "produce", "answer", "help"),
      ("anything", "kind", "content", "request", "question")),
     r"\b(?:can|will|must|should)\s+(?:generate|write|say|produce|answer|do|help with)\s+(?:any kind of|anything|any "
     r"(?:content|request|question))\b.{0,30}\b(?:including|even)\b"
     r"|\b(?:can|will|must)\s+generate\s+any\s+kind\s+of\s+content"),
    ("illegal_ok", "jailbreak", 0.4, ("illegal", "unethical", "harmful", "immoral"),
     r"\b(?:including|even|especially)\s+(?:illegal|unethical|harmful|dangerous|immoral)\b"),
    ("no_warnings", "jailbreak", 0.3, ("warn", "disclaimer", "moraliz"),
     r"\b(?:never|don't|do not|without)\s+(?:warn|add(?:ing)? (?:any )?(?:warnings|disclaimers)|moraliz)"),
    ("no_filter_game", "jailbreak", 0.3, ("filter",), r"\bno[- ]filters?\b"),
    ("safety_rules_removed", "jailbreak", 0.7, ("abolish", "remov", "lift", "disabl", "suspend", "gone", "turned"),
     r"\b(?:safety|ethical|content|ai)\s+(?:\w+\s+)?(?:regulations|rules|guidelines|policies|restrictions|filters|"
     r"laws)\s+(?:were|are|have been|got)\s+(?:all\s+)?(?:abolished|removed|lifted|disabled|suspended|gone|"
     r"turned off|repealed)"),
    ("roleplay_setup", "jailbreak", 0.3, ("roleplay", "role-play", "game", "story", "scenario", "simulation"),
     r"\bin this (?:roleplay|role-play|game|story|scenario|simulation),?\s+you(?: are|'re| will be| play)\b"),
    ("hypothetical_framing", "jailbreak", 0.3, ("pretend", "imagine", "suppose", "assume"),
     r"\b(?:pretend|imagine|suppose|assume)\s+(?:that\s+)?(?:the year is|it is the year|we are in|you are in|"
     r"you live in|there (?:are|is) no)"),
    ("fiction_detailed_howto", "jailbreak", 0.6, ("story", "novel", "scene", "script", "poem", "character", "roleplay"),
     r"\b(?:story|novel|scene|script|poem|character|roleplay)\b.{0,80}\b(?:explains?|describes?|teaches?|shows?)\b"
     r".{0,60}\b(?:in (?:(?:full|complete|great|technical|precise|exact)\s+){1,2}detail|step[- ]by[- ]step|"
     r"exact (?:steps|amounts|recipe))"),
    ("developer_mode_ai", "jailbreak", 0.5, ("developer mode",),
     r"\b(?:ai|assistant|chatgpt|deepseek|model|llm)\b.{0,40}\bdeveloper mode\b"),
    ("developer_mode", "jailbreak", 0.4, ("developer mode", "dev mode", "god mode"),
     r"\b(?:developer|dev|god)\s+mode\b"),
    ("no_ethical_limits", "jailbreak", 0.8,
     ("ethic", "moral", "content", "safety", "openai", "deepseek", "anthropic"),
     r"\b(?:no|without|free(?:d)? (?:of|from)|released from|liberated from|not bound by|unbound by|ignores?|beyond|"
     r"outside)\s+(?:any\s+|all\s+|every\s+)?"
     r"(?:(?:ethical|moral|content|safety|openai(?:'s)?|deepseek(?:'s)?|anthropic(?:'s)?)\s+){1,2}"
     r"(?:guidelines|restrictions|limitations|constraints?|filters|polic(?:y|ies)|rules|boundaries|principles|"
     r"considerations|standards)"),
    ("no_restrictions", "jailbreak", 0.5,
     (("restriction", "limitation", "limits", "filter", "censor", "rules", "boundaries", "morals", "ethics",
       "guideline", "safety"), ("no", "zero", "without")),
     r"\b(?:you(?:'ll| will)? (?:have|has|are under|got)|with|and have|having) (?:no|zero) (?:restrictions|"
     r"limitations|limits|filters|rules|boundaries|guidelines|morals|ethics|censorship)\b"
     r"|\bwithout (?:any )?(?:restrictions|limitations|filters|censorship|morals|ethics|safety (?:checks|filters))\b"),
    ("not_bound", "jailbreak", 0.9, ("no longer", "not ", "free", "liberat", "released"),
     r"\byou(?: are|'re)\s+(?:now\s+)?(?:no longer|not)\s+(?:an?\s+)?(?:ai|assistant|language model|chatgpt|"
     r"deepseek|bound|restricted|limited|constrained|censored|filtered)\b"
     r"|\byou(?: are|'re)\s+(?:now\s+)?(?:free|freed|liberated|released)\s+(?:from|of)\b"),
    ("never_refuse", "jailbreak", 0.6, ("refuse", "decline", "say no", "reject", "deny"),
     r"\b(?:never|don't|do not|dont|cannot|can't|must not|mustn't|will not|won't|shall not)\s+(?:ever\s+)?"
     r"(?:refuse|decline|say no|reject|deny) (?:a|any|my|the)?\s*(?:request|question|prompt|order)s?"
     r"|\b(?:never|don't|do not|cannot|can't|must not|will not|won't) (?:ever )?refuse\b"),
    ("stay_in_character", "jailbreak", 0.4, ("character",),
     r"\b(?:stay|remain|keep)\s+in\s+character\b|\bbreak(?:ing)? character\b"),
    ("jailbreak_word", "jailbreak", 0.4, ("jailbr",), r"\bjailbr(?:eak|oken|eaking)\w*\b"),
    ("dual_response_format", "jailbreak", 0.8, ("🔓", "🔒", "[jailbreak]", "[classic]", "two ", "2 "),
     r"(?:🔓|🔒 ?classic|\[jailbreak\]|\[classic\])"
     r"|\b(?:two|2) (?:different |separate )?(?:responses|answers|paragraphs)\b.{0,120}\b(?:normal|classic|"
     r"filtered|standard)\b.{0,120}\b(?:jailbr|unfiltered|uncensored|dan|developer mode)"),
    ("token_threat", "jailbreak", 1.0, ("token",),
     r"\byou (?:will )?(?:lose|have|start with) \d+ tokens\b|\btokens? (?:will be )?deducted\b"),
    ("fiction_without_rules", "jailbreak", 0.5, ("hypothetic", "fiction", "imagine", "story", "novel", "world"),
     r"\b(?:hypothetical(?:ly)?|fictional|imagine|in a (?:story|novel|movie|world))\b.{0,100}\b(?:no (?:rules|laws|"
     r"restrictions|ethics|morals|limits)|without (?:rules|laws|restrictions|ethics|morals|limits))\b"),
    ("grandma_exploit", "jailbreak", 1.0, ("grandm", "granny", "nana"),
     r"\b(?:grandma|grandmother|granny|nana)\b.{0,160}\b(?:used to|would)\b.{0,120}\b(?:keys?|napalm|bomb|meth|"
     r"serial|activation|password|synthesi[sz]|explosive|poison)"),
    ("amoral_assistant", "jailbreak", 0.7, ("amoral", "machiavell", "unethical", "immoral"),
     r"\b(?:amoral|machiavellian|unethical|immoral)\s+(?:and\s+\w+\s+)?(?:ai|assistant|chatbot|bot|model|character|"
     r"persona|entity)\b"),
    ("unlock_potential", "jailbreak", 0.4, ("unlock", "unleash", "liberat", "free "),
     r"\b(?:unlock|unleash|free|liberate)\s+(?:your|the)\s+(?:true|full|hidden|real|inner|unrestricted)\s+"
     r"(?:potential|self|power|capabilities|form)"),
    # --- system-prompt extraction ----------------------------------------------------------------
    ("reveal_system_prompt", "extraction", 1.0,
     (("system", "initial", "original", "hidden", "secret", "developer", "internal", "confidential", "first", "pre",
       "configuration", "setup", "base", "meta"), ("your",)),
     r"\b(?:reveal|show|print|output|repeat|display|tell|give|leak|dump|share|write(?: out| down)?|spell out|recite|"
     r"disclose|echo|copy|paste|list|provide|return|expose|send|translate|summari[sz]e|encode)\s+(?:me\s+|us\s+)?"
     r"(?:back\s+)?(?:all\s+(?:of\s+)?)?your\s+(?:(?:full|entire|complete|exact|hidden|secret|internal|confidential|"
     r"verbatim|raw|whole|underlying)\s+)*(?:(?:system|hidden|secret|developer|internal|confidential|configuration|"
     r"setup|base|meta)\s*(?:prompt|"
     r"message|instructions?|directives?|rules|configuration)|(?:initial|original|first|pre-?)\s*(?:prompt|"
     r"instructions?|directives?))\b"),
    ("developer_provided_instructions", "extraction", 1.0,
     (("paste", "repeat", "show", "print", "output", "echo", "quote", "copy", "tell", "give", "share", "reveal"),
      ("developer", "operator", "creator", "admin", "owner", "company")),
     r"\b(?:paste|repeat|show|print|output|echo|quote|copy|tell me|give me|share|reveal)\b.{0,30}\b(?:message|"
     r"instructions|prompt|rules|configuration|text)\s+(?:that\s+)?(?:the\s+|your\s+)?(?:developers?|operators?|"
     r"creators?|admins?|owners?|company)\s+(?:set up|gave you|wrote|configured|provided|programmed|put)"),
    ("output_your_instructions", "extraction", 0.6,
     (("output", "print", "list", "repeat", "show", "dump", "reveal", "echo", "write", "quote"), ("your",),
      ("instruction", "rules", "guideline", "directive", "prompt")),
     r"\b(?:output|print|list|repeat|show|dump|reveal|echo|write out|quote)\s+(?:back\s+)?(?:all\s+)?your\s+"
     r"(?:\w+\s+)?(?:instructions|rules|guidelines|directives|prompt)\b"),
    ("verbatim_marker", "extraction", 0.4, ("paraphras", "verbatim", "word"),
     r"\bwithout (?:paraphrasing|summari[sz]ing|changing (?:a|any) word)|\bverbatim\b|\bword for word\b"),
    ("quote_exactly", "extraction", 0.5, ("quote", "repeat", "reproduce", "copy"),
     r"\b(?:quote|repeat|reproduce|copy)\s+(?:them|it|those|these)\s+(?:exactly|verbatim|word for word|in full)"),
    ("show_the_system_prompt", "extraction", 0.6, ("system", "initial", "hidden", "secret", "developer"),
     r"\b(?:reveal|show|print|output|repeat|display|tell|give|leak|dump|disclose|recite|expose)\s+(?:me\s+|us\s+)?"
     r"the\s+(?:(?:full|entire|complete|exact|original|hidden|secret|verbatim)\s+)*(?:system|initial|hidden|secret|"
     r"developer)\s*(?:prompt|message|instructions)\b"),
    ("what_is_your_system_prompt", "extraction", 1.0, ("system", "initial", "original", "hidden", "secret"),
     r"\bwhat (?:is|are|was|were) your (?:exact |full |complete |current )*(?:system prompt|system message|"
     r"system instructions|initial (?:prompt|instructions)|original (?:prompt|instructions)|hidden (?:prompt|"
     r"instructions)|secret instructions)\b"),
    ("what_are_your_instructions", "extraction", 0.5, ("your", "told", "instruct", "programm"),
     r"\bwhat (?:are|were) your (?:exact |full |original )*(?:instructions|rules|guidelines)\b"
     r"|\bwhat (?:were you|have you been) (?:told|instructed|programmed|asked)\b"),
    ("before_the_conversation", "extraction", 0.5, ("before", "prior"),
     r"\b(?:before|prior to)\s+(?:this|the|our)\s+(?:conversation|chat|session)\s+(?:started|began|begun)"),
    ("instructions_you_were_given", "extraction", 0.6, ("given", "configur", "programm", "told", "provided"),
     r"\b(?:instructions|rules|prompt|guidelines|directives)\s+(?:that\s+)?you\s+(?:were|have been|got)\s+"
     r"(?:given|configured with|programmed with|told|provided|initiali[sz]ed with)"
     r"|\b(?:instructions|rules|prompt|guidelines|directives)\s+(?:were|have)\s+you\s+(?:been\s+)?(?:given|told|"
     r"programmed with)"),
    ("repeat_text_above", "extraction", 1.0, ("above", "before", "preceding", "prior to"),
     r"\b(?:repeat|print|output|echo|recite|dump)\b.{0,40}\b(?:everything|all|the (?:entire |whole |full )?(?:text|"
     r"words|content|lines|messages?)|all (?:the )?(?:text|words))\s+(?:above|before|preceding|prior to)\b"
     r"(?!\s+(?:code|function|snippet|example|error|output|query|table|list|command))"),
    ("copy_text_above", "extraction", 0.6, ("above", "before", "preceding", "prior to"),
     r"\b(?:copy|write|show|return|give)\b.{0,40}\b(?:everything|all|the (?:entire |whole |full )?(?:text|words|"
     r"content|lines))\s+(?:above|before|preceding|prior to)\b"
     r"(?!\s+(?:code|function|snippet|example|error|output|query|table|list|command))"),
    ("text_before_first_message", "extraction", 1.0, ("before", "preceding", "prior", "above"),
     r"\b(?:before|preceding|prior to|above)\s+(?:my|this|the|our)\s+(?:very\s+)?first\s+(?:message|question|"
     r"prompt|input|turn)"),
    ("part_of_system_prompt", "extraction", 1.0, ("first", "last", "next"),
     r"\b(?:first|last|next)\s+(?:\d+|few|ten|twenty|hundred)\s+(?:words|lines|sentences|characters|tokens)\s+of\s+"
     r"(?:your|the)\s+(?:system prompt|system message|instructions|prompt|initial prompt|hidden prompt)"),
    ("prompt_verbatim", "extraction", 0.6,
     (("verbatim", "word for word", "full", "exactly"), ("system", "initial", "hidden", "instruction")),
     r"\b(?:system prompt|system message|initial prompt|hidden prompt|initial instructions|instructions above)\s+"
     r"(?:verbatim|"
     r"word for word|in full|exactly)"),
    ("starting_with_you_are", "extraction", 0.5, ("start", "begin"),
     r"\b(?:starting|beginning|begin|start)\s+(?:with|from)\s+(?:the (?:phrase|words?|text|line)\s+)?[\"'“]?"
     r"(?:you are|you're|system:)"),
    # --- fake roles, delimiters and special tokens ---------------------------------------------
    ("special_token", "delimiter", 0.9, ("<|",), r"<\|[^|<>\n]{1,40}\|>"),
    ("chat_template_tokens", "delimiter", 0.3, ("<|",), r"(?s)<\|[^|<>\n]{1,40}\|>.{0,400}?<\|[^|<>\n]{1,40}\|>"),
    ("role_tag", "delimiter", 0.7, ("<system", "</system", "<sys", "<instruction", "</instruction",
                                    "<developer", "<im_", "<assistant"),
     r"</?(?:system|sys|instructions?|im_start|im_end|assistant|developer)(?:\s[^<>]{0,40})?>"),
    ("inst_marker", "delimiter", 0.6, ("[", "<<"),
     r"\[/?(?:inst|sys|system|system message|system prompt|admin|developer|system override)\]|<<\s*/?sys\s*>>"),
    ("end_of_sequence_token", "delimiter", 0.3, ("</s>",), r"</s>"),
    ("role_header", "delimiter", 0.5, ("system", "developer", "admin", "root", "operator"),
     rf"(?m)^[ \t]*{_HEADER_LEAD}\[?(?:system|developer|admin|administrator|root|operator)"
     rf"(?:[ \t]+(?:message|prompt|instructions?|override|note|update))?\]?[ \t]*(?:\*\*)?[ \t]*:"),
    ("assistant_turn", "delimiter", 0.4, ("assistant",),
     rf"(?m)^[ \t]*{_HEADER_LEAD}\[?assistant\]?[ \t]*(?:\*\*)?[ \t]*:"),
    ("system_header_instruction", "delimiter", 0.6, ("system",),
     rf"(?m)^[ \t]*{_HEADER_LEAD}\[?system(?:[ \t]+(?:message|prompt|note))?\]?[ \t]*(?:\*\*)?[ \t]*:[ \t]*.{{0,40}}"
     r"\b(?:new rules?|you (?:must|can|are|will|should)|ignore|disregard|override|from now on|unrestricted|"
     r"no restrictions|(?:is|are) (?:now )?(?:authori[sz]ed|allowed|permitted|free) to)"),
    ("end_of_input_phrase", "delimiter", 0.5,
     (("input", "prompt", "document", "context", "message", "text"), ("here",)),
     r"\b(?:user input|input|prompt|document|context|user message|text)\s+(?:ends|ended|is over|stops|finishes)\s+"
     r"here\b"),
    ("instruction_format_header", "delimiter", 0.5, ("instruction", "response"),
     r"(?m)^[ \t]*#{2,}[ \t]*(?:instruction|response)s?[ \t]*:"),
    ("role_banner", "delimiter", 0.6, ("system", "admin", "developer"),
     r"(?m)^[ \t]*[=\-#*\[<]{2,}[ \t]*(?:system|admin|developer)(?:[ \t]+(?:message|prompt|instructions?|override|"
     r"note))?(?:[ \t]+(?:start|begin|end))?[ \t]*[=\-#*\]>]{2,}"),
    ("role_tags_around", "delimiter", 0.4, ("<system", "</system", "<sys", "<developer", "<instruction"),
     r"(?s)(?:</?(?:system|sys|developer|instructions?)>.{0,400}?</?(?:system|sys|user|assistant|developer|"
     r"instructions?)>|</?(?:user|assistant)>.{0,400}?</?(?:system|sys|developer|instructions?)>)"),
    ("system_override", "delimiter", 0.6,
     (("system", "admin", "developer", "root", "sudo"), ("override", "command", "update", "notice", "alert", "mode")),
     r"\b(?:system|admin|administrator|developer|root|sudo)\s+(?:override|command|update|notice|alert|mode)\s*[:!]"),
    ("end_of_input_marker", "delimiter", 0.5, ("end", "begin", "start"),
     r"(?m)^[ \t]*[-=#*\[<]{2,}[ \t]*(?:end|begin|start)[ \t]+(?:of[ \t]+)?(?:the[ \t]+)?(?:system|user|prompt|"
     r"instructions|input|document|context|conversation)\b"),
    ("fake_role_json", "delimiter", 0.3, ("\"role\"",), r"\"role\"\s*:\s*\"(?:system|developer)\""),
    # --- encoded payloads ----------------------------------------------------------------------
    ("decode_and_obey", "encoded", 0.5, ("decode", "decipher", "base64", "rot13", "rot-13", "hex"),
     r"\b(?:decode|decipher|base64|rot-?13|hex)\b.{0,80}\b(?:follow|execute|obey|do what it says|carry out|"
     r"perform|act on)\b"),
]

RULES: tuple[Rule, ...] = tuple(Rule.of(*row) for row in (*_TABLE, *I18N_TABLE))

# Third-person framing: the text talks *about* an attack ("attacks that tell the model to ...").
MENTION_BEFORE = re.compile(
    rf"(?:\b(?:tells?|telling|told|asks?|asking|instructs?|instructing|makes?|making|tricks?|tricking|forces?|"
    rf"convinces?|gets?|getting|causes?|causing|persuades?)\s+(?:the|a|an|its|their|this|that)\s+{_AGENT}s?\s+"
    rf"(?:to|into)\s+|\b(?:phrases?|strings?|inputs?|prompts?|messages?|payloads?|attacks?|patterns?|text)\s+(?:like|"
    rf"such as|containing|that (?:say|says|contain|contains))\s*:?\s*|\b(?:e\.g\.|for example|for instance|"
    rf"such as|like)\s*:?\s*)[\"'“`«]?$")
MENTION_CONTEXT = re.compile(
    r"\bprompt[- ]injections?\b|\bjailbreak(?:s|ing)?\s+(?:attempts?|attacks?|prompts?|detection)|\binjection attacks?"
    r"|\bred[- ]team|\bllm security\b|\bowasp\b|\bguardrails?\b|\bclassifier\b|\bdetect(?:ion|or|ing|s)?\b"
    r"|\bdefen[cs]e|\bdefend\b|\bmitigat|\bsanitiz|\bexplain\b|\bwhat (?:is|are|does|do)\b"
    r"|\bhow (?:do|does|can|should)\b"
    r"|\battack(?:s|ers?)?\b|\bblog\b|\barticle\b|\bphrases?\b|\bsecurity\b"
    r"|\bwhy (?:do|does|is)\b|\bexamples? of\b|\bunit tests?\b|\btest cases?\b|\bregex\b")
QUOTED = re.compile(r"\"[^\"\n]{1,400}\"|“[^”\n]{1,400}”|```.*?```|`[^`\n]{1,400}`|(?<![\w])'[^'\n]{1,400}'(?![\w])"
                    r"|«[^»\n]{1,400}»|「[^」\n]{1,400}」|\([^()\n]{1,80}\)", re.S)
