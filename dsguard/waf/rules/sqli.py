"""SQL injection: strings closed into conditions, UNION SELECT, SQL-only functions, stacked queries."""

from __future__ import annotations

from ..model import Rule
from .common import DECODED, SQL, WITH_PATH, rule

Q = "['\"`\u00b4\u2019\u2018]"  # anything that closes a string literal
_SQL_FUNCTIONS = (
    "sleep|benchmark|pg_sleep|load_file|extractvalue|updatexml|xmltype|group_concat|concat_ws|"
    "make_set|name_const|elt|unhex|sys_eval|sys_exec|dbms_pipe\\.receive_message|utl_inaddr\\.get_host_name|"
    "utl_http\\.request|dbms_xmlgen|ctxsys\\.drithsx\\.sn|sqlite_version|sqlite_compileoption_(?:used|get)|"
    "json_build_object|jsonb_pretty|unistr|starts_with|string_to_array|pg_read_file|pg_ls_dir|lo_import|"
    "xp_cmdshell|xp_regread|xp_dirtree|sp_executesql|sp_oacreate|openrowset|opendatasource|"
    "information_schema|database|db_name|schema_name|current_user|session_user|system_user|"
    "version|@@version|user_name|table_name|column_name"
)
_SQL_CALLS = (
    "ascii|chr|concat|substr|substring|mid|hex|ord|md5|sha1|sha2|rand|floor|cast|convert|"
    "ifnull|isnull|coalesce|nullif|iif|strcmp|instr|locate|ltrim|rtrim|trim|insert|encode|decode|"
    "compress|uncompress|pow|power|sin|cos|tan|sqrt|sysdate|curdate|curtime|lpad|rpad|soundex|"
    "json_extract|json_keys|json_object|overlay|array_agg|string_agg|xmlagg|to_char|to_number|"
    "find_in_set|div|lo_get|lo_import|lo_export|current_setting|pg_read_binary_file|char_length|"
    "octet_length|bit_length|bin|oct|conv|export_set|field|quote|regexp_substr|regexp_replace|"
    "unix_timestamp|from_unixtime|last_insert_id|row_count|found_rows|connection_id|benchmark|user"
)
_SQL_COMMON_FUNCTIONS = (
    "char|count|if|position|length|len|lower|upper|replace|reverse|repeat|space|exp|abs|now|left|right|"
    "extract|date|year|month|day|hour|minute|second|round|sum|avg|min|max|format"
)

def sqli_rules() -> list[Rule]:
    cond = (r"(?:" + Q + r"|\(|!|@@?\w|\d+(?:\.\d+)?\s*(?:[=<>!^|&*/%+-]|$|;|\)|--|#|\bis\b|\blike\b|\bbetween\b"
            r"|\bin\b|\bor\b|\band\b)|(?:not|true|false|null|exists|select|case|if|ascii|substring|sleep|"
            r"benchmark|[a-z_][\w.]*\s*\())")
    return [
        rule(150100, "sqli", Q + r"\s*\)*\s*(?:(?:or|and|xor)\b|&&|\|\||(?:like|rlike|regexp|having|when)\s)\s*"
             + cond, SQL, targets=WITH_PATH, message="string closed then a boolean condition"),
        rule(150110, "sqli", r"union(?:\W|all\b|distinct\b)*select", SQL, targets=WITH_PATH,
             message="UNION SELECT"),
        rule(150120, "sqli", r"\bselect\b\s*(?:\*|\(|@@|top\s+\d|distinct\b|(?:[\w`.\[\]]+\s*,\s*)+[\w`.\[\]()*]+\s+"
             r"from\b|[\w`.()*]+\s+from\s+[\w`.\[\]\"]+\s*(?:$|;|\)|\bwhere\b|\blimit\b|\border\b|\bgroup\b|"
             r"\bunion\b|\bjoin\b|--|#)|(?:null|\d+)\s*(?:,|\bfrom\b|$|--|#|;)|(?:if|case|sleep|benchmark|"
             r"char|concat|count|version|user|database|load_file|ascii|substring|password|username)\b)", SQL,
             message="SELECT statement"),
        rule(150130, "sqli", r"(?:^|[^\w.])(?:" + _SQL_FUNCTIONS + r")\s*\(|\b(?:information_schema|pg_catalog|"
             r"pg_shadow|sysobjects|syscolumns|sysdatabases|sys\.(?:objects|tables|columns)|mysql\.(?:user|db)|"
             r"msysaccessobjects|msysobjects|sqlite_master|all_tables|user_tables|dba_users|tempdb|msdb|"
             r"northwind|schema_name|table_schema)\b|@@(?:version|datadir|hostname|basedir|servername|"
             r"identity|spid|language)\b", SQL, targets=WITH_PATH, message="SQL-only function or catalogue"),
        rule(150140, "sqli", Q + r"\s*\)*\s*(?:;|--|#|/\*)", DECODED, message="string closed then a comment"),
        rule(150150, "sqli", r"(?:^|\s|\))(?:or|and|xor|&&|\|\|)\s+(?:\d+(?:\.\d+)?|" + Q + r"\w*" + Q +
             r")\s*(?:=|<>|!=|<=>|<=?|>=?|\blike\b|\bis\b|\brlike\b|\bregexp\b)\s*(?:\d|" + Q + r")|"
             r"(?:^|\s)(?:or|and)\s+(?:true|false|not\s+\w+)\s*(?:$|--|#|;|\))", SQL,
             message="numeric tautology"),
        rule(150160, "sqli", r"\bwaitfor[\s+]+(?:delay|time)\b|\binto\s+(?:out|dump)file\b|"
             r"\binsert\s+into\b.*\bvalues\b|"
             r"\bdelete\s+from\s+\w+\s*(?:where|$|;)|\bdrop\s+(?:table|database|schema|view|function|procedure|"
             r"user|index|column)\b|\btruncate\s+table\b|\balter\s+table\b|\bcreate\s+(?:table|database|user|"
             r"function|procedure|trigger)\b|\bexec(?:ute)?\s+(?:xp_|sp_|master\.|@)|\bdeclare\s+@\w+|"
             r"\bshutdown\s+with\b|\b(?:order|group)\s+by\s+\d+\s*(?:--|#|;|$|\))|\bhaving\s+\d+\s*=|"
             r"\bcase\s+when\b.*\bthen\b|\b(?:in|exists)\s*\(\s*select\b|\bload\s+data\s+(?:local\s+)?infile\b",
             SQL, message="SQL statement"),
        rule(150170, "sqli", r"::\s*(?:int|integer|text|jsonb?|varchar|bigint|numeric|regclass|oid|bytea|bool)\b|"
             + Q + r"\s*(?:<@|@>|\?[|&]?|#>>?|#-|->>?|@[?@])\s*" + Q + r"|\|\|\s*(?:chr|char)\s*\(|"
             r"\bchr\s*\(\s*\d+\s*\)\s*\|\||" + Q + r"\s*\?[|&]\s*array\s*\[|" +
             Q + r"\s*(?:\|\||&&|\^|=|<>|!=|<=>|\+|\*)\s*(?:\(|" + Q +
             r"|\w+\s*\(|\d)", SQL, targets=WITH_PATH, message="SQL operator after a string"),
        rule(150180, "sqli", r"/\*!\d*|\w/\*.*?\*/\w|\b(?:select|union|from|where|and|or)/\*|\*/(?:select|union|from|"
             r"where|and|or)\b|\b\d+\.e[(.]|\bselect\s*\(", DECODED,
             message="SQL comment obfuscation"),
        rule(150210, "sqli", r"(?:^|[^\w.])(?:" + _SQL_CALLS + r")\s*\(", SQL, targets=WITH_PATH,
             message="SQL function call"),
        rule(150220, "sqli", r"(?:^|[.\[])\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|not|nor|or|and|"
             r"elemmatch|text|expr|all|size|type|mod|jsonschema)\b", DECODED,
             message="NoSQL query operator"),
        rule(150230, "sqli", r";\s*(?:truncate\b|update\s+[\w`\[\]\"]+(?:\s+set\b|\s*$)|insert\s+into\b|"
             r"delete\s+from\b|"
             r"drop\s+\w+|exec(?:ute)?\s|declare\s|shutdown\b|alter\s+\w+\s|create\s+\w+\s)|\b(?:and|or)\s*\(?\s*"
             r"[\w`.]+\s*(?:=|<>|!=|\blike\b)\s*['\"`]|\)\s*(?:like|rlike|regexp)\s*\(|\bif\s*\(\s*\d+\s*[=<>]|"
             r"\bhaving\s+(?:count|sum|min|max|avg)\s*\(|\bprocedure\s+analyse\b|\bexecute\s+immediate\b|"
             r"\b(?:except|intersect)\s+select\b|\bselect\s+(?:pg_sleep|sleep|benchmark)\b|"
             r"\d+\s+as\s*[\"'`][^\"'`]*[\"'`]?\s*from\b|\bas[\"'`]\s*from\b|" + Q +
             r"\s*(?:regexp|rlike|sounds\s+like)\b", SQL, targets=WITH_PATH, message="SQL clause"),
        rule(150240, "sqli", r"['\"`].*\b(?:or|and|xor)\s+['\"`]\w*$", SQL,
             message="condition left open for the query's own closing quote"),
        rule(150300, "sqli", r"(?:^|\s|\()(?:and|or|xor|not|&&|\|\|)\s*\(?\s*[\w@.'\"`]+\s*(?:=|==|!=|<>|<=>)\s*"
             r"[\w@'\"`(-]|(?:&&|\|\|)\s*\(?\s*\w*\s*(?:==|!=|=)", SQL, paranoia=2,
             message="boolean operator then a comparison"),
        rule(150310, "sqli", r"\)\s*as\s+[\w\"`\[\]]+\s+from\b|;\s*as\s+\w+\s+from\b|\)\s*when\s+\d+\s+then\b|"
             r"\bcollate\s+\w+\s*(?:--|#|;|$)|" + Q + r"\s*(?:not\s*null|is\s+(?:not\s+)?null)\b", SQL, paranoia=2,
             message="SQL clause fragment"),
        rule(150190, "sqli", r"(?:^|[^\w.])(?:" + _SQL_COMMON_FUNCTIONS + r")\s*\(", SQL, paranoia=2,
             message="SQL function call"),
        rule(150200, "sqli", Q + r"\s*(?:\b(?:or|and|union|select|from|where)\b|;)", SQL, paranoia=2,
             message="SQL keyword after a string"),
    ]
