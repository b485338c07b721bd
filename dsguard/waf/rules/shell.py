"""Unix command injection: a command after a shell separator, at the start of a value, or behind a wrapper.

Names that are also everyday words (``time``, ``find``, ``more``) count only with shell-like
arguments after them; names no prose contains (``whoami``, ``ifconfig``, ``visudo``) count alone.
"""

from __future__ import annotations

from ..model import Rule
from .common import DECODED, SHELL, UPLOADED_NAMES, one_of, rule

WORDY_COMMANDS = (
    "more", "less", "time", "type", "last", "who", "w", "file", "find", "sort", "join", "split", "cut", "at", "open",
    "write", "install", "make", "watch", "nice", "head", "tail", "host", "source", "set", "export", "which", "free",
    "top", "users", "groups", "script", "init", "as", "ar", "route", "expect", "sum", "wall", "batch", "comm",
    "fold", "column", "paste", "dig", "ping", "kill", "mail", "service", "stat", "tee", "tr", "history", "alias",
    "cd", "env", "echo", "printf", "sleep", "touch", "mount", "diff", "rev", "ln", "cp", "mv", "rm", "dd", "od",
    "nl", "id", "ps", "ip", "ll", "la", "su", "du", "df", "java", "node", "date", "exec", "eval", "test", "true",
    "false", "read", "let", "local", "return", "exit", "shift", "wait", "jobs", "bg", "fg", "disown", "logout",
    "pass", "go", "yum", "snap", "screen", "strings", "patch", "finger", "locate",
)
# Names that only a shell user types: they count as a command even with nothing after them.
DISTINCT_COMMANDS = (
    "ifconfig", "ipconfig", "whoami", "uname", "netstat", "nslookup", "traceroute", "tracert", "ncat", "netcat",
    "socat", "crontab", "useradd", "usermod", "userdel", "groupadd", "visudo", "sudoedit", "nohup", "busybox",
    "systemctl", "journalctl", r"ansible-[\w-]+", r"chef-[\w-]+", "cscli", "bsdtar", "chmod", "chown", "chgrp",
    "mkfifo", "mknod", "xxd", "pkexec", "nsenter", "unshare", "capsh", "dmesg", "lsof", "getent", "printenv",
    "strace", "ltrace", "tclsh", "jrunscript", "jjs", "aptitude", "apt-get", "apt-cache", "dpkg", "zypper",
    "iptables", "ip6tables", "modprobe", "insmod", "rmmod", "sysctl", "losetup", "chattr", "lsattr", "setfacl",
    "getfacl", "runuser", "readelf", "objdump", r"sha\d+sum", "md5sum", "ssh-keygen", "ssh-copy-id", "keytool",
    "masscan", "hping3", "rlwrap", "stdbuf", "unbuffer", "setsid", "ionice", "cpulimit", "killall", "pkill",
    "pgrep", "chpasswd", "gpasswd", "newgrp", "lastlog", "lastb", "ulimit", "mkswap", "swapon", "fdisk", "blkid",
    "lsblk", "lspci", "lsusb", "lsmod", "hostnamectl", "timedatectl", "loginctl", "xdg-open", "msfconsole",
    "msfvenom", "crictl",
)
# Tools whose names people also search for or talk about: a command once arguments follow.
PRODUCT_COMMANDS = (
    "ansible", "kubectl", "podman", "docker", "helm", "terraform", "openssl", "nmap", "wget", "tcpdump", "gdb",
    "lldb", "valgrind", "xterm", "sqlmap", "chroot", "passwd", "parted", "uptime", "perf",
)
OTHER_COMMANDS = (
    "cat", "tac", "ls", "hostname", "pwd", "nc", "ssh", "scp", "tftp", "zsh", "ksh", "csh", "tcsh", "dash",
    r"python[23]?", r"python\d?(?:\.\d+)?", r"perl\d*", r"ruby\d*", r"php\d*", "nodejs", "deno", "bun", r"lua\d*",
    "awk", "gawk", "nawk", "mawk", "sed", "grep", "egrep", "fgrep", "rgrep", "xargs", "rmdir", "mkdir", "sleep",
    "base32", "basenc", "gzip", "gunzip", "unzip", "bzip2", "xz", "7z", "sudo", "doas", "sendmail", "timeout",
    "uniq", "wc", "irb", "jrunscript", "screen", "tmux", "gcc", "cc", "c89", "c99", "cmake", "ld", "wish", "cpio",
    "rsync", "sftp", "trap", "mesg", "pinky", "htop", "shred", "truncate", "logger", "readlink", "realpath",
    "dirname", "basename", "whereis", "bridge", "flock", "uconv", "iconv", "puppet", "salt", "helm", "knife",
    "pip", "pip3", "npm", "npx", "gem", "composer", "systemd-run", "aa-exec", "bash", r"sh\d*", "vi", "vim",
    "nano", "emacs", "ed", "rview", "lynx", "w3m", "arp", "base64", "docker", "curl", "telnet", "ftp", "rpm",
    "zip", "tar", "apt", "dir", "nmap", r"rmt(?:-\w+)?",
)
UNIX_COMMANDS = one_of((*WORDY_COMMANDS, *DISTINCT_COMMANDS, *PRODUCT_COMMANDS, *OTHER_COMMANDS))
UNWORDY_COMMANDS = one_of(c for c in (*DISTINCT_COMMANDS, *PRODUCT_COMMANDS, *OTHER_COMMANDS)
                          if c not in WORDY_COMMANDS)
WORDY = one_of(WORDY_COMMANDS)
DISTINCT = one_of(DISTINCT_COMMANDS)
PRODUCTS = one_of(PRODUCT_COMMANDS)
WRAPPER = (r"(?:time|nohup|strace|ltrace|nice|ionice|timeout|env|sudo|doas|watch|exec|command|builtin|stdbuf|"
           r"setsid|chroot|xargs|busybox|unbuffer|rlwrap|runuser)(?:\s+-[\w-]+(?:\s+-?\d+)?|\s+\d+[smhd]?)*")
_WRAPPERS = r"\s*(?:" + WRAPPER + r"\s+)*"
_END = r"(?:\s|$|[;&|<>`)])"
# Arguments that make a command out of a word: options, paths, globs, redirections.
_ARGUMENT = r"(?:\s+(?:-{1,2}[a-z]|[/~.$*?]|[\w.-]*[/*?]|\d+\.\d+\.\d+|https?:|[<>|;&`])|\s*[<>|;&`])"
_SEPARATOR = r"(?:[;|`\n]|\$\(|&&)\s*\(*" + _WRAPPERS
_WEAK_SEPARATOR = r"(?:^|[&(]|\bthen\b|\bdo\b)" + _WRAPPERS
_BIN = r"(?:(?:/usr)?(?:/local)?/s?bin/)?"
CONFIG_FILES = (r"\.ht(?:access|passwd|digest|group)|\.user\.ini|php\d?\.ini|web\.config|wp-config[\w.-]*|"
                r"(?:config|parameters|routing|security|services)(?:_\w+)?\.ya?ml|(?:default\.)?settings(?:\.local)?"
                r"\.php|local\.xml|\.env(?:\.\w+)?|\.git(?:config|ignore|modules)?|\.npmrc|\.bashrc|\.profile|"
                r"authorized_keys|crontab")


def unix_rules() -> list[Rule]:
    return [
        rule(120100, "rce", _SEPARATOR + r"\s*(?:sudo\s+)?" + _BIN + r"(?:" + UNWORDY_COMMANDS + r")" + _END + "|" +
             _SEPARATOR + r"(?:" + WORDY + r")(?:$|[;&|<>`)])|(?:[;|`\n]|\$\(|&&)\(*(?:" + WORDY + r")\s|" +
             _SEPARATOR + r"\s*(?:" + WORDY + r")" + _ARGUMENT, SHELL, message="command after a shell separator"),
        rule(120110, "rce", _WEAK_SEPARATOR + r"\s*(?:sudo\s+)?(?:" + UNIX_COMMANDS + r")" + _ARGUMENT, SHELL,
             message="command with shell arguments"),
        rule(120170, "rce", r"^\s*\(*\s*(?:" + WRAPPER + r")\s+" + _WRAPPERS + _BIN + r"(?:" + UNIX_COMMANDS + r")" +
             _END + r"|(?:^|[;&|`\n]|\$\()\s*\(*\s*" + _BIN + r"(?:" + DISTINCT + r")" + _END + r"|^\s*" + _BIN +
             r"(?:" + PRODUCTS + r")(?:\s+[\w.:=-]+){0,2}" + _ARGUMENT, SHELL,
             message="command at the start of a value"),
        rule(120120, "rce", r"(?:^|[\s;&|`'\"(=<>])/(?:usr/)?(?:local/)?s?bin/[a-z]|\$\{?ifs\b|\$\([a-z]|"
             r"`\s*(?:" + UNIX_COMMANDS + r")\b[^`]*`|\(\s*\)\s*\{|\{[a-z]+,[^}\s]+\}|\{,[^{}\s\"':]*\}|"
             r"\{[^{}\s\"':]+,\}|\{,\$|/[\w.]*[?*][\w.?*]*/[\w.?*]*[?*]|\b(?:nc|ncat|netcat)\b.*\s-[el]|"
             r"/dev/(?:tcp|udp)/|/(?:tcp|udp)/\d{1,3}(?:\.\d{1,3}){3}/\d+|>\s*/(?:tmp|dev|etc|var)/|"
             r"(?:^|[\s;|&(])\\(?:" + UNIX_COMMANDS + r")(?:\s|$)", DECODED, message="shell construct"),
        rule(120160, "rce", r"\$\{?shell\}?\s+-c\b|\balias\s+(?:[-+]\w+\s+)*[\w-]+=|\$\{[^}]*[#%:\-+/^,@][^}]*\}|"
             r"\$\(\(|\$\[|[<>]\(\s*[a-z]|/[\w.-]*\[!?[\w-]+\][\w.-]*(?:/|$)|(?:^|[\s;|&=])(?:/usr)?/?s?bin/"
             r"[a-z][\w-]*\b|\btrap\s+.+\s(?:sig)?(?:exit|int|term|hup)\b|-wrapper\s+\S*sh\b|\|\s*\$\w+\s+\w|"
             r"(?:^|[\s;|&])~[+-]\d*(?:$|[\s/;|&])|(?:^|[\s;|&\"'])!(?:-\d+|!)(?:$|[\s;|&!\"'])|"
             r"(?:[;|`\n]|&&|\$\()\s*\$\{?[a-z_]\w*\}?(?:\s|$)|[a-z]\$[@*][a-z]|[a-z][<>]\(\s*\)[a-z]", DECODED,
             message="shell expansion"),
        rule(120180, "rce", r"[\r\n]\s*(?:mail\s+from|rcpt\s+to)\s*:|[\r\n]\s*(?:helo|ehlo)\s+[\w.-]+\s*(?:$|[\r\n])|"
             r"[\r\n][a-z]{0,8}\d{1,8}\s+(?:append|authenticate|capability|check|close|copy|create|delete|examine|"
             r"expunge|fetch|list|login|logout|lsub|noop|rename|search|select|starttls|status|store|subscribe|uid|"
             r"unsubscribe)\b|[\r\n]\s*(?:retr|dele)\s+\d+\s*(?:$|[\r\n])", DECODED,
             message="mail protocol command after a line break"),
        rule(120190, "rce", r"(?:^|[/\\])(?:" + CONFIG_FILES + r")\s*$", DECODED, targets=UPLOADED_NAMES,
             message="upload of a server configuration file"),
        rule(120200, "rce", r"(?:^|[;|&`\n])\s*\.(?:databases|shell|system|tables|dump|import|output|once|read|load|"
             r"open|clone|backup|restore)\b|(?:^|[;|&`\n])\s*(?:ex|vi|vim|view|rview)\s.*(?:\s-c\s*:?|\+)\s*!?\s*!",
             DECODED, paranoia=2, message="SQLite or editor command escape after a separator"),
        rule(120210, "rce", r"[\r\n]\s*(?:quit|help|noop|rset|data|list|top|stat|user|pass|auth|apop|uidl|retr|dele|"
             r"capa|stls|vrfy|expn|turn|etrn)(?:\s+[\w@.<>=+/-]+){0,3}\s*(?:$|[\r\n])", DECODED, paranoia=2,
             message="mail protocol command on a line of its own"),
        rule(120140, "rce", r"^\s*" + _BIN + r"(?:" + UNIX_COMMANDS + r")(?:\s+\S+)*\s+(?:-{1,2}[a-z][\w-]*|"
             r"[\w.~-]*/[\w./~*?-]*|[\w*?-]+\.[a-z0-9*?]{1,4})(?:\s+\S+)*\s*$", SHELL, paranoia=2,
             message="command line with options or file arguments"),
    ]
