"""Windows command injection: cmd.exe commands and batch control flow, PowerShell cmdlets and aliases."""

from __future__ import annotations

from ..model import Rule
from .common import DECODED, SHELL, one_of, rule

WINDOWS_COMMANDS = one_of((
    "cmd", "powershell", "pwsh", "certutil", "bitsadmin", "wmic", "reg", "regedit", "regsvr32", "rundll32", "mshta",
    "cscript", "wscript", "systeminfo", "tasklist", "taskkill", "ipconfig", "net", "net1", "netsh", "schtasks", "sc",
    "whoami", "type", "copy", "del", "erase", "start", "ver", "vol", "findstr", "icacls", "cacls", "attrib",
    "bcdedit", "bcdboot", "bootcfg", "diskpart", "vssadmin", "wevtutil", "msiexec", "fsutil", "takeown", "runas",
    "xcopy", "robocopy", "forfiles", "cipher", "wbadmin", "nltest", "dsquery", "qwinsta", "rwinsta", "quser",
    "query", "msbuild", "installutil", "regasm", "regsvcs", "odbcconf", "cmstp", "mavinject", "expand",
    "makecab", "extrac32", "esentutl", "ntdsutil", "mklink", "shutdown", "logoff",
    # PowerShell aliases
    "iwmi", "gwmi", "iwr", "irm", "icm", "saps", "sajb", "gci", "gps", "spps", "sls", "ni", "ri", "rni", "cpi",
))
POWERSHELL_VERBS = "invoke|start|new|get|set|remove|add|out|convertto|convertfrom|import|export|stop|enable|disable"
POWERSHELL_NOUNS = (
    "wmimethod|wmiobject|ciminstance|cimmethod|process|object|item|itemproperty|content|childitem|webrequest|"
    "restmethod|expression|command|service|acl|localuser|localgroupmember|mppreference|executionpolicy|"
    "scheduledtask|module|clixml|securestring|base64|bitstransfer|psdrive|psremoting|pssession|history"
)
_SEPARATOR = r"(?:^|[;&|\n(]|\$\()\s*"


def windows_rules() -> list[Rule]:
    return [
        rule(120130, "rce", _SEPARATOR + r"(?:" + WINDOWS_COMMANDS + r")(?:\.exe)?(?:\s+[/-][a-z?]|\s*[<>|])|"
             r"\bcmd(?:\.exe)?\s+/[ck]\b|\bpowershell(?:\.exe)?\s+-|%(?:systemroot|comspec|windir|systemdrive|"
             r"programfiles|userprofile|temp|appdata)%|\b(?:net\s+(?:user|localgroup|view|share)|"
             r"ipconfig\s+/all|certutil\s+-urlcache|iex\s*\(|new-object\s+(?:system\.)?net\.webclient|"
             r"downloadstring|downloadfile)\b|\b(?:" + POWERSHELL_VERBS + r")-(?:" + POWERSHELL_NOUNS + r")\b|"
             r"\bhkey_(?:local_machine|current_user|classes_root|users|current_config)\b|\bhk(?:lm|cu|cr):",
             SHELL, message="Windows command"),
        rule(120150, "rce", r"^\s*(?:&\s*)?for\s+(?:/[dflr]\s+)*(?:[^%]*\s)?%%?[\w~@\[\]/_-]+\s+in\s*\(|"
             r"^\s*(?:&\s*)?if(?:\s+|\s*/i\s+)(?:not\s+)?(?:exist|defined|errorlevel|cmdextversion)\b|"
             r"^\s*(?:&\s*)?if(?:\s+|\s*/i\s+).{0,200}\s(?:equ|neq|lss|leq|gtr|geq)\s|"
             r"^\s*(?:&\s*)?if(?:\s+|\s*/i\s*)(?:not\s+)?(?:\"[^\"]*\"|\([^)]*\)|[^\s=]+)\s*==",
             DECODED, message="Windows batch control"),
    ]
