"""PHP injection: open tags, function calls by name or through variables, wrappers, serialized objects."""

from __future__ import annotations

from ..model import Rule
from .common import DECODED, UNESCAPED, UNESCAPED_CODE, UPLOADED_NAMES, WITH_PATH, rule

PHP_FUNCTIONS = (
    "eval|assert|system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec|pcntl_fork|include|include_once|"
    "require|require_once|file_get_contents|file_put_contents|fopen|fwrite|fputs|fread|file|readfile|"
    "unlink|rmdir|mkdir|copy|rename|chmod|base64_decode|base64_encode|gzinflate|gzuncompress|gzdecode|"
    "str_rot13|convert_uudecode|hex2bin|create_function|call_user_func|call_user_func_array|"
    "func_get_args|array_map|array_filter|array_walk|usort|uasort|preg_replace|preg_replace_callback|"
    "phpinfo|print_r|var_dump|var_export|highlight_file|show_source|parse_str|extract|putenv|getenv|"
    "ini_set|ini_get|ini_restore|set_include_path|dl|mail|move_uploaded_file|curl_exec|curl_init|"
    "fsockopen|pfsockopen|stream_socket_client|escapeshellcmd|escapeshellarg|posix_getpwuid|posix_kill|"
    "posix_setuid|symlink|link|glob|scandir|opendir|readdir|chr|ord|serialize|unserialize|"
    "simplexml_load_string|get_defined_vars|get_defined_functions|phpversion|php_uname|getcwd|"
    "chdir|header|setcookie|session_start|ob_start|register_shutdown_function|"
    "register_tick_function|set_error_handler|spl_autoload_register|debug_backtrace|uniqid|sleep|"
    "strrev|strtolower|strtoupper|str_replace|substr|implode|explode|urldecode|rawurldecode|"
    "htmlspecialchars_decode|stripslashes|hexdec|bindec|octdec|md5|sha1|crc32|mt_rand|rand|printf|sprintf|"
    "vsprintf|fprintf|date_add|date_create|tidy_parse_string|filegroup|fileowner|fileperms|unpack|pack|"
    "ucfirst|lcfirst|gethostbyname|gethostbynamel|dns_get_record|get_headers|stream_get_contents|"
    "array_reduce|iterator_apply|forward_static_call|mb_ereg_replace|ereg_replace|getallheaders|"
    "apache_request_headers|get_cfg_var|fpassthru|gzopen|gzread|bzopen|zip_open|lchown|lchgrp|touch|"
    "tempnam|tmpfile|is_writable|is_readable|file_exists|disk_free_space|parse_ini_file|parse_ini_string|"
    "yaml_parse|ldap_connect|socket_create|socket_connect|stream_socket_server|ob_get_contents|exit|die|"
    "intval|floatval|boolval|strval|settype|gettype|strlen|strpos|stripos|strrpos|strstr|stristr|strtr|ucwords|"
    "nl2br|addslashes|htmlentities|htmlspecialchars|number_format|in_array|array_keys|array_values|compact|"
    "bzdecompress|zlib_decode|zlib_encode|assert_options|mb_send_mail|imap_open|imap_mail|error_log|"
    "proc_nice|proc_terminate|proc_get_status|finfo_open|get_object_vars|get_class_methods|method_exists|"
    "function_exists|class_exists|is_callable|spl_autoload_call|session_decode|session_set_save_handler|"
    "strip_tags|stripcslashes|addcslashes|html_entity_decode|quotemeta|chunk_split|wordwrap|similar_text|"
    "levenshtein|soundex|metaphone|money_format|nl_langinfo|localeconv|setlocale|ctype_alpha|lcg_value"
)
# PHP-only function names: prose and ordinary parameters never contain them, with or without a call.
HIGH_RISK_FUNCTIONS = (
    "shell_exec|proc_open|pcntl_exec|pcntl_fork|fsockopen|pfsockopen|base64_decode|gzinflate|gzuncompress|"
    "gzdecode|zlib_decode|bzdecompress|str_rot13|convert_uudecode|create_function|call_user_func|"
    "file_get_contents|file_put_contents|move_uploaded_file|phpinfo|show_source|highlight_file|php_uname|"
    "posix_(?:getpwuid|getpwnam|kill|setuid|setgid|mkfifo|getlogin|uname)|passthru|stream_socket_client|"
    "stream_socket_server|get_defined_vars|get_defined_functions|register_shutdown_function|assert_options|"
    "set_include_path|preg_replace_callback|forward_static_call|mb_ereg_replace|escapeshellcmd|"
    "escapeshellarg|apache_request_headers|getallheaders|get_cfg_var|disk_free_space|ini_get_all|"
    "parse_ini_file|session_set_save_handler|spl_autoload_register|imap_open"
)
# Prefixes of PHP's standard library (``is_array``, ``str_repeat``, ``array_map``): a call of one is PHP.
LIBRARY_PREFIXES = (
    "is|str|array|mb|preg|ctype|json|ob|posix|pcntl|proc|stream|socket|curl|gz|bz|zlib|openssl|hash|filter|"
    "ini|func|session|iconv|mysqli?|pg|odbc|sqlite|ldap|simplexml|libxml|apache|php|error|assert|spl|"
    "highlight|show|file|disk|fsock|var|debug|get_defined|set_error|set_exception|register|call_user|mcrypt|"
    "sodium|imap|mail|xml|dom|exif|finfo|image|iptc|gd|bcmath|gmp|date|timezone|cal|intl|grapheme|idn|"
    "ftp|ssh2|expect|yaml|zip|rar|phar|opcache|apcu?|ob_get|http|uri|url"
)
INI_DIRECTIVES = (
    "allow_url_fopen|allow_url_include|arg_separator\\.(?:input|output)|auto_append_file|auto_detect_line_endings|"
    "auto_globals_jit|auto_prepend_file|browscap|default_charset|default_mimetype|default_socket_timeout|"
    "disable_classes|disable_functions|display_errors|display_startup_errors|doc_root|docref_ext|docref_root|"
    "enable_dl|enable_post_data_reading|engine|error_append_string|error_log|error_prepend_string|"
    "error_reporting|expose_php|extension|extension_dir|file_uploads|hard_timeout|html_errors|"
    "ignore_repeated_errors|ignore_repeated_source|ignore_user_abort|implicit_flush|include_path|"
    "input_encoding|internal_encoding|log_errors|log_errors_max_len|max_execution_time|max_file_uploads|"
    "max_input_nesting_level|max_input_time|max_input_vars|memory_limit|open_basedir|output_buffering|"
    "output_encoding|output_handler|post_max_size|precision|realpath_cache_size|realpath_cache_ttl|"
    "register_argc_argv|register_globals|report_memleaks|request_order|safe_mode|sendmail_from|sendmail_path|"
    "serialize_precision|short_open_tag|smtp|smtp_port|sys_temp_dir|track_errors|unserialize_callback_func|"
    "unserialize_max_depth|upload_max_filesize|upload_tmp_dir|user_agent|user_dir|variables_order|"
    "zend_extension|magic_quotes_gpc|magic_quotes_runtime|cgi\\.force_redirect|cgi\\.fix_pathinfo|"
    "(?:session|mbstring|opcache|mysqli?|pdo_?\\w*|zend|xdebug|assert|pcre|phar|soap|curl|openssl|zlib|mail|"
    "sqlite3|filter|iconv|intl|date|suhosin|user_ini|syslog|sql|fastcgi|apc|apcu)\\.[a-z_]+"
)
_GAP = r"(?:\s|#[^\n]*\n|//[^\n]*\n|/\*.*?\*/)*"
_SUBSCRIPT = r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
_GAP_ITEMS = r"(?:\s|#[^\n]*\n|//[^\n]*\n|/\*.*?\*/|" + _SUBSCRIPT + r"|\{[^}]*\})*"
_NAME = r"[\"']?[a-z_]\w*[\"']?"


def php_rules() -> list[Rule]:
    return [
        rule(130100, "php", r"<\?(?:$|[^x]|x(?:$|[^m]|m(?:$|[^l]|l(?:$|\S))))|[\[{]\s*\\?/?php\s*[\]}]", DECODED,
             targets=WITH_PATH, message="PHP open tag"),
        rule(130110, "php", r"(?:^|[^\w$>:.-])(?:" + PHP_FUNCTIONS + r"|(?:" + LIBRARY_PREFIXES + r")_[a-z0-9_]+)" +
             _GAP + r"(?:\(|\x60)", UNESCAPED, targets=WITH_PATH, message="PHP function call"),
        rule(130150, "php", r"(?:[(\[]\s*)?['\"]\s*(?:" + PHP_FUNCTIONS +
             r")\s*['\"]\s*[)\]]?(?:\s*\[[^\]]*\])*\s*\(|"
             r"[(\[]\s*(?:" + PHP_FUNCTIONS + r")\s*[)\]](?:\s*\[[^\]]*\])*" + _GAP + r"\(|"
             r"(?:" + HIGH_RISK_FUNCTIONS + r")\b", UNESCAPED, message="PHP function by name"),
        rule(130160, "php", r"\$\s*\{\s*['\"@$]|\$\s+\{|\$\{\s*\w+\s*\}\s*\(|\$[\w]*" + _GAP_ITEMS + r"\(|"
             r"\bssh2\.\w+://", UNESCAPED, message="PHP variable function"),
        rule(130190, "php", r"\(\s*(?:" + _NAME + r"|\[\s*" + _NAME + r"\s*\](?:\s*\[\s*\d+\s*\])+)\s*\)\s*"
             r"(?:\{\s*\d+\s*\}|\[\s*\d+\s*\])*\s*\([^)]*\)\s*;", UNESCAPED_CODE,
             message="PHP call of a parenthesised or subscripted name"),
        rule(130170, "php", r"\.\s*(?:php\d*|phtml|pht|phpt|phar|phps|inc)[.\s]*$", DECODED, targets=UPLOADED_NAMES,
             message="PHP file upload"),
        rule(130180, "php", r"(?:^|[/\\])sess_[\w,-]{16,}\s*$", DECODED, targets=UPLOADED_NAMES,
             message="PHP session file upload"),
        rule(130120, "php", r"\$_(?:get|post|cookie|request|server|env|files|session)\b|\$globals\b|"
             r"\$http_raw_post_data|\$\{\s*['\"]?\w+['\"]?\s*\}\s*\(|\$\w+\s*\(\s*['\"$\w)]|"
             r"\b(?:php|zlib|phar|ssh2|rar|ogg|expect|compress\.(?:zlib|bzip2))://",
             DECODED, message="PHP variable or wrapper"),
        rule(130130, "php", r"\b[oc]:\d+:\"[\w\\]+\":\d+:\{|\ba:\d+:\{[sia]:\d", DECODED,
             message="PHP serialized object"),
        rule(130140, "php", r"^\s*(?:" + INI_DIRECTIVES + r")\s*=|\b(?:allow_url_(?:include|fopen)|"
             r"auto_(?:prepend|append)_file|disable_functions|open_basedir|safe_mode|register_globals|suhosin\.\w+|error_log|include_path|"
             r"display_errors|file_uploads|magic_quotes_gpc|short_open_tag)\s*=", DECODED,
             message="PHP configuration directive"),
    ]
