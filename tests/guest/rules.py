"""Static rules over the guest scripts' syntax trees: what a script running as SYSTEM must never do.

Each rule returns the violations it finds (empty: the script complies). `NEGATIVE_EXAMPLES` holds, per rule,
small valid PowerShell snippets the rule must catch: proof that a rule is not vacuous.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tree_sitter import Node, Tree

from tests.guest import psast

# Commands a repair script never needs: code from strings, downloads, policy changes, reboots (the engine
# restarts through ARM), firewall weakening, and shells that would hide what runs from these rules.
FORBIDDEN_COMMANDS = frozenset(
    name.lower()
    for name in (
        "Invoke-Expression",
        "Invoke-WebRequest",
        "Invoke-RestMethod",
        "Start-BitsTransfer",
        "Set-ExecutionPolicy",
        "Set-NetFirewallProfile",
        "Disable-NetFirewallRule",
        "Remove-NetFirewallRule",
        "Set-NetFirewallRule",
        "New-NetFirewallRule",
        "Restart-Computer",
        "Stop-Computer",
        "Invoke-Command",
        "Start-Process",
        "Add-Type",
        "Read-Host",
        "netsh",
        "netsh.exe",
        "cmd",
        "cmd.exe",
        "reg",
        "reg.exe",
        "wmic",
        "wmic.exe",
        "bitsadmin",
        "bitsadmin.exe",
        "certutil",
        "certutil.exe",
        "powershell",
        "powershell.exe",
        "pwsh",
        "pwsh.exe",
    )
)
# Text that must not appear in code (comments may explain why).
FORBIDDEN_TEXT = (
    "DownloadString",
    "DownloadFile",
    "Net.WebClient",
    "[scriptblock]::Create",
    "ResetRDPCert",
    "MachineKeys_old",
    "NTAccount",
    "NT AUTHORITY\\",
    "BUILTIN\\",
    "$args",
)
# Built-in aliases (and common Unix-style names) a script must spell out as full cmdlet names.
_ALIAS_NAMES = (
    "% ? ac asnp cat cd chdir clc clear clhy cli clp cls clv cnsn compare copy cp cpi cpp curl cvpa dbp del "
    "diff dir dnsn ebp echo epal epcsv epsn erase etsn exsn fc fhx fl foreach ft fw gal gbp gc gcb gci gcm "
    "gcs gdr ghy gi gin gjb gl gm gmo gp gps gpv group gsn gsnp gsv gtz gu gv gwmi h history icm iex ihy ii "
    "ipal ipcsv ipmo ipsn irm ise iwmi iwr kill lp ls man md measure mi mount move mp mv nal ndr ni nmo "
    "npssc nsn nv ogv oh popd ps pushd pwd r rbp rcjb rcsn rd rdr ren ri rjb rm rmdir rmo rni rnp rp rsn "
    "rsnp rujb rv rvpa rwmi sajb sal saps sasv sbp sc scb select set shcm si sl sleep sls sort sp spjb spps "
    "spsv start stz sujb sv swmi tee trcm type wget where wjb write"
)
ALIASES = frozenset(_ALIAS_NAMES.split())
# Listener security settings: a script may read them, never write them (never weaken NLA, TLS, encryption).
SECURITY_SETTINGS = ("SecurityLayer", "UserAuthentication", "MinEncryptionLevel")
SECURITY_METHODS = ("SetSecurityLayer", "SetUserAuthenticationRequired", "SetEncryptionLevel")
# icacls permission syntax "<principal>:(rights)"; the principal must be a SID ("*S-1-...").
_GRANT = re.compile(r"^(?P<principal>[^:()]+):(\([A-Z,]+\))+$", re.IGNORECASE)
_SID_GRANT = re.compile(r"^\*S-1-\d+(-\d+)*:(\([A-Z,]+\))+$", re.IGNORECASE)
_REGISTRY_WRITERS = ("set-itemproperty", "new-itemproperty")
# The only firewall rule a script may name: Remote Desktop User Mode TCP-In, by Name (never localized). Shadow
# lets an administrator watch or control sessions, and RDP over UDP may be off on purpose: neither is touched.
USER_MODE_RULES = ("RemoteDesktop-UserMode-In-TCP",)
# Service cmdlets wait without a limit (a service stuck in StopPending hangs the script and no summary is printed).
UNBOUNDED_SERVICE_COMMANDS = frozenset({"restart-service", "stop-service", "start-service", "suspend-service"})

Rule = Callable[[Tree], list[str]]


def forbidden_commands(tree: Tree) -> list[str]:
    return [
        f"forbidden command {c.name}"
        for c in psast.commands(tree)
        if c.lowered in FORBIDDEN_COMMANDS or c.lowered.removesuffix(".exe") in FORBIDDEN_COMMANDS
    ]


def forbidden_text(tree: Tree) -> list[str]:
    code = psast.code_text(tree).lower()
    return [f"forbidden text {needle!r}" for needle in FORBIDDEN_TEXT if needle.lower() in code]


def aliases(tree: Tree) -> list[str]:
    """Full cmdlet names only: Verb-Noun, a Windows tool by its .exe name, or a function of the script."""
    defined = {name.lower() for name in psast.functions(tree)}
    problems = []
    for command in psast.commands(tree):
        name = command.lowered
        if name in ALIASES:
            problems.append(f"alias {command.name}")
        elif not (name.endswith(".exe") or name in defined or re.fullmatch(r"[a-z]+-[a-z0-9]+", name)):
            problems.append(f"not a full command name: {command.name}")
    return problems


def security_settings(tree: Tree) -> list[str]:
    """The listener's security settings appear only where they are read: in a Get-* command or a read of a
    member, never assigned, never passed to a writing command; the WMI methods that set them never appear."""
    problems = []
    for node in psast.walk(tree.root_node):
        if node.child_count or psast.is_comment(node) or node.type == "comment":
            continue
        leaf = psast.text(node).lower()
        for method in SECURITY_METHODS:
            if method.lower() in leaf:
                problems.append(f"calls {method}")
        if not any(name.lower() in leaf for name in SECURITY_SETTINGS):
            continue
        chain = list(psast.ancestors(node))
        command = next((a for a in chain if a.type == "command"), None)
        if command is not None:
            name = next((n for n in psast.walk(command) if n.type == "command_name"), None)
            if name is not None and psast.text(name).lower().startswith("get-"):
                continue
            problems.append(f"passes {psast.text(node)} to {psast.text(name) if name else 'a command'}")
        elif any(a.type == "left_assignment_expression" for a in chain):
            problems.append(f"assigns {psast.text(node)}")
        elif not any(a.type == "member_access" for a in chain):
            problems.append(f"names {psast.text(node)} outside a read")
    return problems


def tls_values(tree: Tree) -> list[str]:
    """SCHANNEL values are only ever written to enable a protocol: Enabled=1, DisabledByDefault=0."""
    problems = []
    for command in psast.commands(tree):
        if command.lowered not in _REGISTRY_WRITERS:
            continue
        name, value = (command.value_of("Name") or "").lower(), (command.value_of("Value") or "").strip()
        if name == "enabled" and value != "1":
            problems.append(f"writes Enabled={value}")
        if name == "disabledbydefault" and value != "0":
            problems.append(f"writes DisabledByDefault={value}")
        if name not in ("enabled", "disabledbydefault"):
            problems.append(f"{command.name} writes {command.value_of('Name')}, not an SCHANNEL enable value")
    return problems


def firewall_by_rule_name(tree: Tree) -> list[str]:
    """Firewall rules are selected by Name, and only the User Mode rules: never by localized display names, never
    by the whole group (which includes the Shadow rule), never every rule a pipeline happens to pass on."""
    problems = []
    for command in psast.commands(tree):
        if not command.lowered.endswith("-netfirewallrule"):
            continue
        flags = {arg.lower() for arg in command.args}
        if flags & {"-displaygroup", "-displayname", "-group"}:
            problems.append(f"{command.name} selects rules by group or display name")
        # Reading may enumerate (an allow path can be any rule); changing names its one rule.
        if "-name" not in flags and not command.lowered.startswith("get-"):
            problems.append(f"{command.name} without -Name")
    for value, _ in psast.strings(tree):
        if value.lower().startswith("remotedesktop-") and value not in USER_MODE_RULES:
            problems.append(f"names the firewall rule {value}")
    if "@firewallapi.dll,-28752" in psast.code_text(tree).lower():
        problems.append("names the whole Remote Desktop rule group")
    return problems


def remove_item(tree: Tree) -> list[str]:
    """Only certificates are ever deleted: Remove-Item names the Remote Desktop store, never MachineKeys,
    never recursively; no .Delete() calls on files or folders."""
    problems = []
    for command in psast.commands(tree):
        if command.lowered != "remove-item":
            continue
        body = psast.text(command.node).lower()
        if "cert:\\localmachine\\remote desktop" not in body:
            problems.append("Remove-Item outside Cert:\\LocalMachine\\Remote Desktop")
        if "machinekeys" in body or "crypto" in body:
            problems.append("Remove-Item on the machine key store")
        if "-recurse" in body or "-deletekey" in body:
            problems.append("Remove-Item -Recurse/-DeleteKey")
    if re.search(r"(::|\.)delete\s*\(", psast.code_text(tree), re.IGNORECASE):
        problems.append("calls a .Delete() method")
    return problems


def ownership_and_acls(tree: Tree) -> list[str]:
    """takeown and icacls act on one object at a time: no /r (the whole Crypto tree) and no /t (every key)."""
    problems = []
    for command in psast.commands(tree):
        name = command.lowered.removesuffix(".exe")
        flags = {arg.lower() for arg in command.args}
        if name == "takeown" and "/r" in flags:
            problems.append("recursive takeown")
        if name == "icacls" and ({"/t", "/reset"} & flags):
            problems.append("recursive or resetting icacls")
    return problems


def sid_grants(tree: Tree) -> list[str]:
    """Every icacls-style grant names its principal by SID: account names are localized."""
    problems = []
    tokens = [value for value, _ in psast.strings(tree)]
    tokens += [arg for c in psast.commands(tree) if c.lowered.removesuffix(".exe") == "icacls" for arg in c.args]
    for token in tokens:
        if _GRANT.match(token.strip()) and not _SID_GRANT.match(token.strip()):
            problems.append(f"grant by account name: {token}")
    for command in psast.commands(tree):
        if command.lowered.removesuffix(".exe") != "icacls":
            continue
        for i, arg in enumerate(command.args[:-1]):
            following = command.args[i + 1]
            if arg.lower() in ("/grant", "/deny", "/grant:r", "/setowner") and not (
                following.startswith("$") or following.startswith("*S-1-")
            ):
                problems.append(f"icacls {arg} {following}: not a SID")
    return problems


def bounded_service_control(tree: Tree) -> list[str]:
    """Services are stopped and started through ServiceController with a bounded WaitForStatus(status, timeout),
    never with the service cmdlets, which wait forever on a service stuck in StopPending."""
    problems = [
        f"{c.name} waits without a limit" for c in psast.commands(tree) if c.lowered in UNBOUNDED_SERVICE_COMMANDS
    ]
    for node in psast.walk(tree.root_node):
        if node.type != "invokation_expression":
            continue
        member = next((c for c in node.children if c.type == "member_name"), None)
        if member is None or psast.text(member).lower() != "waitforstatus":
            continue
        arguments = [
            n for n in psast.walk(node) if n.type == "argument_expression" and n.parent in _argument_lists(node)
        ]
        if len(arguments) < 2:
            problems.append(f"{psast.text(node)} has no timeout")
    return problems


def _argument_lists(invocation: Node) -> list[Node]:
    return [
        lst
        for arguments in invocation.children
        if arguments.type == "argument_list"
        for lst in arguments.children
        if lst.type == "argument_expression_list"
    ]


def guarded_invocation_info(tree: Tree) -> list[str]:
    """`$_.InvocationInfo` may be $null, and under strict mode a member of $null throws: inside a catch that
    loses the summary. A member of InvocationInfo is read only inside `if ($null -ne <x>.InvocationInfo)`."""
    problems = []
    for node in psast.walk(tree.root_node):
        if node.type not in ("member_access", "invokation_expression") or not node.children:
            continue
        base = node.children[0]
        member = (
            next((c for c in base.children if c.type == "member_name"), None) if base.type == "member_access" else None
        )
        if member is None or psast.text(member).lower() != "invocationinfo":
            continue
        if not _inside_null_check(node, psast.text(base)):
            problems.append(f"reads {psast.text(node)} without checking {psast.text(base)} for $null")
    return problems


def _inside_null_check(node: Node, guarded: str) -> bool:
    wanted = re.escape(guarded.lower())
    condition = re.compile(rf"^\s*(\$null\s+-ne\s+{wanted}|{wanted}\s+-ne\s+\$null)\s*$")
    for ancestor in psast.ancestors(node):
        if ancestor.type != "if_statement":
            continue
        test = next((c for c in ancestor.children if c.type == "pipeline"), None)
        block = next((c for c in ancestor.children if c.type == "statement_block"), None)
        inside = block is not None and block.start_byte <= node.start_byte < block.end_byte
        if test is not None and inside and condition.match(psast.text(test).lower()):
            return True
    return False


def acl_reads_guarded(tree: Tree) -> list[str]:
    """Reading an ACL needs read-permissions access, which the typical broken key container denies even to
    SYSTEM: every Get-Acl sits in a try of its own function whose catch takes UnauthorizedAccessException
    (by type, or every exception), so that an unreadable ACL is a finding, not the end of the script."""
    problems = []
    for command in psast.commands(tree):
        if command.lowered != "get-acl":
            continue
        function = _enclosing(command.node, "function_statement")
        statement = _enclosing(command.node, "try_statement")
        if statement is None or _enclosing(statement, "function_statement", include_self=True) != function:
            problems.append(f"{psast.text(command.node)} is not in a try of its own function")
            continue
        body = next(c for c in statement.children if c.type == "statement_block")
        if not body.start_byte <= command.node.start_byte < body.end_byte:
            problems.append(f"{psast.text(command.node)} runs inside a catch")
            continue
        catches = _catch_clauses(statement)
        if not any(_catches_access_denied(c) for c in catches):
            problems.append(f"{psast.text(command.node)}: no catch for UnauthorizedAccessException")
    return problems


def _catch_clauses(statement: Node) -> list[Node]:
    """The catch clauses of this try statement (not of the ones nested in it)."""
    group = next((c for c in statement.children if c.type == "catch_clauses"), None)
    return [c for c in group.children if c.type == "catch_clause"] if group is not None else []


def _enclosing(node: Node, kind: str, *, include_self: bool = False) -> Node | None:
    if include_self and node.type == kind:
        return node
    return next((a for a in psast.ancestors(node) if a.type == kind), None)


def _catches_access_denied(clause: Node) -> bool:
    types = next((c for c in clause.children if c.type == "catch_type_list"), None)
    return types is None or "unauthorizedaccessexception" in psast.text(types).lower()


_AUTOMATIC = frozenset({"$true", "$false", "$null", "$_", "$psitem", "$lastexitcode"})


def undefined_variables(tree: Tree) -> list[str]:
    """Under Set-StrictMode a variable read before any assignment stops the script: every variable must be a
    parameter, a foreach variable or assigned somewhere (a cheap guard against typos PowerShell would find late)."""
    defined = set(_AUTOMATIC)
    used: dict[str, int] = {}
    for node in psast.walk(tree.root_node):
        if node.type != "variable":
            continue
        name = psast.text(node).lower()
        if name.startswith("$env:"):
            continue
        parent = node.parent
        if parent is not None and (
            parent.type in ("script_parameter", "foreach_statement")
            or any(a.type == "left_assignment_expression" for a in psast.ancestors(node))
        ):
            defined.add(name)
        used.setdefault(name, node.start_point[0] + 1)
    return [f"{name} (line {line}) is never assigned" for name, line in sorted(used.items()) if name not in defined]


# CIM cmdlets take a time limit of their own; the CDXML cmdlets (NetSecurity, NetTCPIP, NetConnection) do not,
# so they run as jobs that Receive-Bounded waits for within the limit. A hung WMI provider must not hold the VM's
# only Run Command slot for 90 minutes.
CIM_COMMANDS = frozenset({"get-ciminstance", "set-ciminstance", "invoke-cimmethod", "get-cimassociatedinstance"})
CDXML_PREFIXES = ("get-netfirewall", "enable-netfirewall", "get-nettcpconnection", "get-netconnectionprofile")


def bounded_cim_calls(tree: Tree) -> list[str]:
    """Every CIM call carries -OperationTimeoutSec; every CDXML call runs with -AsJob inside Receive-Bounded."""
    problems = []
    for command in psast.commands(tree):
        flags = {arg.lower() for arg in command.args}
        if command.lowered in CIM_COMMANDS and "-operationtimeoutsec" not in flags:
            problems.append(f"{command.name} without -OperationTimeoutSec")
        if command.lowered.startswith(CDXML_PREFIXES):
            outer = next((a for a in psast.ancestors(command.node) if a.type == "command"), None)
            wrapped = outer is not None and psast.text(outer).lower().startswith("receive-bounded ")
            if "-asjob" not in flags or not wrapped:
                problems.append(f"{command.name} not run as a job bounded by Receive-Bounded")
    return problems


RULES: dict[str, Rule] = {
    "forbidden_commands": forbidden_commands,
    "forbidden_text": forbidden_text,
    "aliases": aliases,
    "security_settings": security_settings,
    "tls_values": tls_values,
    "firewall_by_rule_name": firewall_by_rule_name,
    "remove_item": remove_item,
    "ownership_and_acls": ownership_and_acls,
    "sid_grants": sid_grants,
    "undefined_variables": undefined_variables,
    "bounded_service_control": bounded_service_control,
    "guarded_invocation_info": guarded_invocation_info,
    "acl_reads_guarded": acl_reads_guarded,
    "bounded_cim_calls": bounded_cim_calls,
}

NEGATIVE_EXAMPLES: dict[str, tuple[str, ...]] = {
    "bounded_cim_calls": (
        "$setting = Get-CimInstance -ClassName 'Win32_TSGeneralSetting' -Namespace 'root\\cimv2\\TerminalServices'",
        "Set-CimInstance -InputObject $setting -Property @{ SSLCertificateSHA1Hash = $t }",
        "$p = @(Get-CimAssociatedInstance -InputObject $session -ResultClassName 'Win32_Process')",
        "$rules = @(Get-NetFirewallRule -PolicyStore RSOP -Name $RdpTcpRule)",
        "$job = Get-NetTCPConnection -State Listen -AsJob",
    ),
    "undefined_variables": (
        "$summary = @{}\nWrite-Output $sumary",
        "foreach ($item in $list) { Write-Output $item }",
    ),
    "forbidden_commands": (
        "Set-NetFirewallProfile -All -Enabled False",
        "Disable-NetFirewallRule -Group '@FirewallAPI.dll,-28752'",
        "netsh.exe advfirewall set allprofiles state off",
        "Invoke-Expression -Command $text",
        "Invoke-WebRequest -Uri $url -OutFile $file",
        "Set-ExecutionPolicy -ExecutionPolicy Bypass -Scope Process",
        "Restart-Computer -Force",
    ),
    "forbidden_text": (
        "$code = (New-Object -TypeName Net.WebClient).DownloadString($url)",
        "Rename-Item -LiteralPath $keys -NewName 'MachineKeys_old'",
        "$account = [System.Security.Principal.NTAccount]::new('NETWORK SERVICE')",
        "Write-Output $args[0]",
    ),
    "aliases": (
        "gci -Path $folder | % { $_.Name }",
        "Get-Service | ? { $_.Status -eq 'Running' }",
        "iex $text",
        "ls $folder",
        "cat $file",
        "sc $file 'text'",
        "Checkit -Path $folder",
    ),
    "security_settings": (
        "Set-ItemProperty -Path $RdpTcpKey -Name 'SecurityLayer' -Value 0",
        "New-ItemProperty -LiteralPath $RdpTcpKey -Name UserAuthentication -Value 0 -Force",
        "$setting.MinEncryptionLevel = 1",
        "$name = 'UserAuthentication'",
        "Invoke-CimMethod -InputObject $setting -MethodName SetUserAuthenticationRequired",
    ),
    "tls_values": (
        "Set-ItemProperty -LiteralPath $Tls12ServerKey -Name 'Enabled' -Value 0",
        "New-ItemProperty -LiteralPath $Tls12ServerKey -Name 'DisabledByDefault' -Value 1 -Force",
        "Set-ItemProperty -LiteralPath $RdpTcpKey -Name 'fDenyTSConnections' -Value 1",
    ),
    "firewall_by_rule_name": (
        "Enable-NetFirewallRule -DisplayGroup 'Remote Desktop'",
        "Enable-NetFirewallRule -Group '@FirewallAPI.dll,-28752'",
        "$rules = @(Get-NetFirewallRule -PolicyStore ActiveStore -Group $RdpRuleGroup -Direction Inbound)",
        "$RdpRuleGroup = '@FirewallAPI.dll,-28752'",
        "Get-NetFirewallRule -Direction Inbound | Enable-NetFirewallRule",
        "Disable-NetFirewallRule -AssociatedNetFirewallPortFilter $filter",
        "Enable-NetFirewallRule -Name 'RemoteDesktop-Shadow-In-TCP'",
        "$names = @('RemoteDesktop-UserMode-In-TCP', 'RemoteDesktop-Shadow-In-TCP')",
    ),
    "bounded_service_control": (
        "Restart-Service -Name 'TermService' -Force",
        "Start-Service -Name 'UmRdpService'",
        "Stop-Service -Name 'SessionEnv' -Force",
        "$service.WaitForStatus('Stopped')",
    ),
    "guarded_invocation_info": (
        "try { Get-Date } catch { $text = '{0} (line {1})' -f $_.Exception, $_.InvocationInfo.ScriptLineNumber }",
        "$line = $Record.InvocationInfo.ScriptLineNumber",
        "if ($null -ne $Record) { $line = $Record.InvocationInfo.ScriptLineNumber }",
        "if ($null -ne $Record.InvocationInfo -and $line) { $n = 1 }\n$text = $Record.InvocationInfo.PositionMessage",
        "$where = $PSItem.InvocationInfo.GetHashCode()",
    ),
    "acl_reads_guarded": (
        "function Get-Sddl {\n    param([string]$Path)\n    (Get-Acl -LiteralPath $Path).Sddl\n}",
        "try { $a = 1 } catch { $acl = Get-Acl -LiteralPath $Path }",
        "try { $acl = Get-Acl -LiteralPath $Path } catch [System.IO.IOException] { $acl = $null }",
        "try {\n    function Test-It {\n        param($P)\n        Get-Acl -Path $P\n    }\n} catch { $x = 1 }",
    ),
    "remove_item": (
        "Remove-Item -LiteralPath 'C:\\ProgramData\\Microsoft\\Crypto\\RSA\\MachineKeys' -Recurse -Force",
        "Remove-Item -LiteralPath $MachineKeysPath",
        "Remove-Item -Path (Join-Path -Path 'Cert:\\LocalMachine\\Remote Desktop' -ChildPath $t) -DeleteKey",
        "[System.IO.Directory]::Delete($MachineKeysPath, $true)",
    ),
    "ownership_and_acls": (
        "takeown.exe /f 'C:\\ProgramData\\Microsoft\\Crypto' /a /r",
        "icacls.exe 'C:\\ProgramData\\Microsoft\\Crypto\\RSA\\MachineKeys' /t /c /grant '*S-1-5-20:(R)'",
    ),
    "sid_grants": (
        "icacls.exe $MachineKeysPath /grant 'NT AUTHORITY\\NETWORK SERVICE:(R)'",
        "$grants = @('Administrators:(F)', '*S-1-5-18:(F)')",
        "icacls.exe $MachineKeysPath /grant 'Everyone:(F)'",
        "icacls.exe $MachineKeysPath /setowner Administrators",
    ),
}


def preamble(tree: Tree, script: str) -> list[str]:
    """What every script starts and ends with: help, parameters, strict mode, identity, the summary line."""
    problems = []
    root = tree.root_node
    first = root.children[0] if root.children else None
    if first is None or first.type != "comment" or not psast.text(first).startswith("<#"):
        problems.append("does not begin with a comment-based help block")
    elif ".SYNOPSIS" not in psast.text(first) or ".PARAMETER DetectOnly" not in psast.text(first):
        problems.append("help block lacks .SYNOPSIS or .PARAMETER DetectOnly")
    parameters = psast.script_parameters(tree)
    detect = next((p for p in parameters if p.name == "DetectOnly"), None)
    if (
        detect is None
        or detect.type != "string"
        or detect.validate_set != ("true", "false")
        or detect.default != "false"
    ):
        problems.append("no DetectOnly parameter: [ValidateSet('true', 'false')] [string] defaulting to 'false'")
    problems += [
        f"parameter {p.name} is [{p.type}]: Run Command passes text, which does not bind to it"
        for p in parameters
        if p.type in ("switch", "bool", "boolean")
    ]
    commands = psast.commands(tree)
    if not any(c.lowered == "set-strictmode" and (c.value_of("Version") or "").lower() == "latest" for c in commands):
        problems.append("no Set-StrictMode -Version Latest")
    values = {a.target.lower(): psast.text(a.value).strip() for a in psast.assignments(tree)}
    if values.get("$erroractionpreference") != "'Stop'":
        problems.append("no $ErrorActionPreference = 'Stop'")
    if values.get("$scriptname") != f"'{script}'":
        problems.append(f"no $ScriptName = '{script}'")
    if not re.fullmatch(r"'\d+\.\d+\.\d+'", values.get("$scriptversion", "")):
        problems.append("no $ScriptVersion = 'x.y.z'")
    converts = [c for c in commands if c.lowered == "convertto-json"]
    if not converts or any("-compress" not in {a.lower() for a in c.args} or not c.value_of("Depth") for c in converts):
        problems.append("the summary is not written with ConvertTo-Json -Compress -Depth N")
    statements = next((c for c in root.children if c.type == "statement_list"), None)
    top = [s for s in statements.children if s.type != "comment"] if statements is not None else []
    if not any(s.type == "try_statement" and "catch" in psast.text(s) for s in top):
        problems.append("no top-level try/catch around the work")
    if not top or psast.text(top[-1]).strip() != "Write-Summary -Summary $summary":
        problems.append("the last statement is not Write-Summary -Summary $summary")
    return problems


def diagnose_checks(tree: Tree) -> list[str]:
    """diagnose runs each check in a try/catch of its own, named after the finding it fills, whose catch records
    the error (Add-CheckError) and lets the next check run: one failing check never leaves the later findings
    at their defaults. Between the summary and Write-Summary only checks, plain assignments and progress run."""
    problems = []
    statements = _top_level_statements(tree)
    start = next((i for i, s in enumerate(statements) if psast.text(s).startswith("$summary =")), None)
    if start is None:
        return ["no $summary = [ordered]@{...}"]
    summary = next(h for h in psast.hash_literals(tree) if statements[start].start_byte <= h.node.start_byte)
    findings = summary.value_literal("findings")
    expected = set(findings.keys if findings is not None else ()) - {"recommended"}
    filled: set[str] = set()
    names: list[str] = []
    for statement in statements[start + 1 : -1]:
        text = psast.text(statement)
        if statement.type == "try_statement":
            name, check_problems = _check(statement)
            problems += check_problems
            names.append(name)
            keys = _findings_assigned(statement)
            filled |= keys
            if keys - {name}:
                problems.append(f"check {name!r} fills {', '.join(sorted(keys))}: one finding a check")
        elif not _harmless(statement):
            problems.append(f"outside a check: {text[:60]}")
    problems += [f"check {name!r} appears twice" for name in sorted({n for n in names if names.count(n) > 1})]
    problems += [f"finding {key} is filled by no check" for key in sorted(expected - filled)]
    return problems


def _top_level_statements(tree: Tree) -> list[Node]:
    statements = next((c for c in tree.root_node.children if c.type == "statement_list"), None)
    return [s for s in statements.children if s.type != "comment"] if statements is not None else []


def _harmless(statement: Node) -> bool:
    """Progress, or an assignment to a plain variable (a finding is filled only inside its check)."""
    text = psast.text(statement)
    if text.startswith("Write-Step "):
        return True
    assignment = statement.type == "pipeline" and any(c.type == "assignment_expression" for c in statement.children)
    return assignment and not re.match(r"^\$findings\.", text, re.IGNORECASE)


def _check(statement: Node) -> tuple[str, list[str]]:
    """The check's name (Add-CheckError -Check '<name>' in its catch) and what is wrong with its catch."""
    clauses = _catch_clauses(statement)
    if len(clauses) != 1 or any(c.type == "catch_type_list" for c in clauses[0].children):
        return "?", [f"a check needs exactly one catch, for every error: {psast.text(statement)[:60]}"]
    clause = clauses[0]
    calls = [
        n for n in psast.walk(clause) if n.type == "command" and psast.text(n).lower().startswith("add-checkerror ")
    ]
    name = "?"
    if calls:
        arguments = re.search(r"-Check\s+'([^']+)'", psast.text(calls[0]))
        name = arguments.group(1) if arguments else "?"
    problems = []
    if not calls or name == "?":
        problems.append(f"a check's catch must call Add-CheckError -Check '<finding>': {psast.text(clause)[:60]}")
    if any(
        n.type == "flow_control_statement" and psast.text(n).lower().startswith("throw") for n in psast.walk(clause)
    ):
        problems.append(f"check {name!r} rethrows: the next checks would not run")
    return name, problems


def _findings_assigned(statement: Node) -> set[str]:
    keys = set()
    for node in psast.walk(statement):
        if node.type == "left_assignment_expression":
            match = re.match(r"^\$findings\.(\w+)", psast.text(node).strip(), re.IGNORECASE)
            if match:
                keys.add(match.group(1))
    return keys
