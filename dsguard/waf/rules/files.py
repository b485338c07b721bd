"""Path traversal and local file inclusion: ``../`` in any spelling, system files, file URLs."""

from __future__ import annotations

import string

from ..model import Rule, Selector
from .common import DECODED, WITH_PATH, other_than, rule

SENSITIVE_FILES = (
    r"etc/(?:passwd|shadow|group|gshadow|hosts|issue|motd|crontab|sudoers|fstab|hostname|resolv\.conf|"
    r"ssh/|httpd/|apache2?/|nginx/|mysql/|php\.ini|my\.cnf|security/|master\.passwd|pwd\.db|profile|"
    r"environment|networks|inittab|ld\.so|login\.defs|aliases|exports)|"
    r"proc/(?:self|\d+)/(?:environ|cmdline|fd|maps|mem|status|cwd|exe|root)|proc/(?:version|cpuinfo|mounts)|"
    r"var/log/|var/run/secrets|usr/local/etc|root/\.|home/[^/]+/\.|"
    r"(?:^|/)\.(?:htaccess|htpasswd|bash_history|bashrc|bash_profile|profile|ssh|aws|docker|kube|git|svn|hg|"
    r"env|npmrc|pgpass|my\.cnf|netrc|gnupg|config)\b|id_rsa|id_dsa|id_ecdsa|id_ed25519|authorized_keys|"
    r"known_hosts|boot\.ini|win\.ini|system\.ini|windows/(?:system32|win\.ini|repair)|winnt/|"
    r"system32/(?:config|drivers|cmd\.exe)|inetpub/|web\.config|wp-config\.php|localsettings\.php|"
    r"config\.inc\.php|configuration\.php|settings\.php|database\.yml|server\.xml|"
    r"(?:\.aws|\.docker|gcloud|\.git)/credentials|credentials\.(?:json|xml|ya?ml|db|csv)|"
    r"web-inf/|meta-inf/|applicationhost\.config|config/sam$|ntds\.dit|sys/(?:class|kernel|firmware|devices|block)\b|"
    r"proc/(?:interrupts|meminfo|net|sys|partitions|modules|kcore)\b|\.docker/|\.kube/config|"
    r"(?:debug|error|errors|access)\.log\b|[\w-]+\.(?:sql|bak|old|orig|swp|backup|dump|sqlite3?|mdb)"
    r"(?:\.(?:zip|gz|tgz|tar|bz2|7z|rar|xz))?$"
)
_NAME_CHARS = string.ascii_lowercase + string.digits + "_-"


def lfi_rules() -> list[Rule]:
    return [
        rule(110100, "lfi", r"(?:^|[/\\=:;\s'\"(,])\.{2,}[/\\;]|[/\\]\.{2,}(?:[/\\;]|$)|(?:0x2e|0x5c|0x2f){2}",
             DECODED, targets=WITH_PATH, message="directory traversal"),
        rule(110110, "lfi", r"(?:^|[/\\\s'\"=:;(])(?:" + SENSITIVE_FILES + r")", DECODED, targets=WITH_PATH,
             message="system file"),
        rule(110130, "lfi", r"/\." + other_than("well-known", _NAME_CHARS) + r"(?:/|$)|/@fs/|/@id/", DECODED,
             targets=(Selector("REQUEST_FILENAME"),), message="hidden file or directory"),
        rule(110120, "lfi", r"\b(?:file|php|zip|phar|glob|expect|data)://|\bfile:/[/\w]", DECODED,
             message="file URL"),
    ]
