<#
.SYNOPSIS
    Enables the local built-in rule "Remote Desktop - User Mode (TCP-In)" (Name RemoteDesktop-UserMode-In-TCP),
    only when nothing else lets the listener's port in.

.DESCRIPTION
    Re-checks, and reports `refused` instead of acting when: a Group Policy copy of the rule exists (the policy's
    owner decides); the rule's port is not Port or the listener does not use Port. Does nothing when an enabled
    inbound allow rule for the port already covers an active profile, or the firewall is off there. Otherwise
    enables the one rule by its Name (not localized), within its own profile and remote-address scope: never the
    rule group (which includes the Shadow rule), never the UDP rule, never a new or wider rule.

.PARAMETER DetectOnly
    'true' reports what would be enabled and changes nothing. Default 'false'.

.PARAMETER RuleName
    The rule to enable; only RemoteDesktop-UserMode-In-TCP is accepted.

.PARAMETER Port
    The listener's TCP port the engine saw (1-65535). Default 3389.

.OUTPUTS
    Progress lines, then one compact ASCII JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: Disable-NetFirewallRule -Name RemoteDesktop-UserMode-In-TCP.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false',

    [ValidateSet('RemoteDesktop-UserMode-In-TCP')]
    [string]$RuleName = 'RemoteDesktop-UserMode-In-TCP',

    [ValidateRange(1, 65535)]
    [int]$Port = 3389
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'enable-firewall-rule'
$ScriptVersion = '2.0.0'

$CimTimeoutSeconds = 20
$RdpTcpKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server\WinStations\RDP-Tcp'
$RdpTcpRule = 'RemoteDesktop-UserMode-In-TCP'

function Write-Step {
    # Progress for the Run Command output. Write-Host, not Write-Output, so that progress never becomes part of
    # a function's return value.
    param([string]$Message)
    Write-Host ('[{0}] {1}' -f $ScriptName, $Message)
}

function Add-Text {
    # One entry of a summary list, clipped to the contract's 300 characters.
    param([System.Collections.Generic.List[string]]$List, [string]$Text)
    if ($Text.Length -gt 300) {
        $Text = $Text.Substring(0, 297) + '...'
    }
    $List.Add($Text)
}

function ConvertTo-AsciiJson {
    # Windows PowerShell 5.1 writes stdout in the OEM code page and ConvertTo-Json leaves non-ASCII characters as
    # they are: escape each as \uXXXX, which is the same JSON in pure ASCII.
    param([string]$Json)
    $builder = New-Object -TypeName System.Text.StringBuilder
    foreach ($character in $Json.ToCharArray()) {
        if ([int]$character -gt 126) {
            [void]$builder.AppendFormat('\u{0:x4}', [int]$character)
        }
        else {
            [void]$builder.Append($character)
        }
    }
    $builder.ToString()
}

function Write-Summary {
    # The contract: one compact ASCII JSON object as the last line of output. Run Command keeps only the last
    # 4096 bytes, so the line stays within 4000. The change record (actions) is kept first: lists are cut to 20
    # entries, then errors are dropped before actions until it fits, and `truncated` counts what was dropped.
    param([System.Collections.IDictionary]$Summary)
    $dropped = 0
    foreach ($name in @('actions', 'errors')) {
        while ($Summary[$name].Count -gt 20) {
            $Summary[$name].RemoveAt(20)
            $dropped++
        }
    }
    while ($true) {
        if ($dropped -gt 0) {
            $Summary['truncated'] = $dropped
        }
        $json = ConvertTo-AsciiJson -Json (ConvertTo-Json -InputObject $Summary -Compress -Depth 8)
        if ($json.Length -le 4000) {
            break
        }
        $list = $Summary['errors']
        if ($list.Count -eq 0) {
            $list = $Summary['actions']
        }
        if ($list.Count -eq 0) {
            break
        }
        $list.RemoveAt($list.Count - 1)
        $dropped++
    }
    Write-Output $json
}

function Format-ErrorText {
    # An error for the summary, with its script line when PowerShell knows it. InvocationInfo can be $null, and
    # under strict mode reading a member of $null throws: inside a catch that would cost the summary.
    param([System.Management.Automation.ErrorRecord]$Record)
    $line = 0
    if ($null -ne $Record.InvocationInfo) {
        $line = $Record.InvocationInfo.ScriptLineNumber
    }
    if ($line -gt 0) {
        return ('{0} (line {1})' -f $Record.Exception.Message, $line)
    }
    $Record.Exception.Message
}

function Get-RegistryValue {
    # A registry value, or $Default when the key or the value does not exist.
    param([string]$Path, [string]$Name, [object]$Default)
    $item = Get-ItemProperty -LiteralPath $Path -Name $Name -ErrorAction SilentlyContinue
    if ($null -eq $item) {
        return $Default
    }
    $item.$Name
}

function Receive-Bounded {
    # The result of a job (a CDXML cmdlet run with -AsJob), or an error when it does not finish within the time
    # limit: the NetSecurity and NetTCPIP cmdlets take no -OperationTimeoutSec of their own.
    param([System.Management.Automation.Job]$Job)
    $finished = Wait-Job -Job $Job -Timeout $CimTimeoutSeconds
    if ($null -eq $finished) {
        Stop-Job -Job $Job
        Remove-Job -Job $Job -Force
        throw ('{0} did not answer within {1} s' -f $Job.Command, $CimTimeoutSeconds)
    }
    # "No matching objects" (a rule that does not exist, nothing listening) is an empty answer, not a failure.
    $jobErrors = @()
    $output = Receive-Job -Job $Job -ErrorAction SilentlyContinue -ErrorVariable jobErrors
    Remove-Job -Job $Job -Force
    $failures = @($jobErrors | Where-Object { [string]$_.CategoryInfo.Category -ne 'ObjectNotFound' })
    if ($failures.Count -gt 0) {
        throw $failures[0]
    }
    $output
}

function Get-RdpRuleProfileState {
    # The local rule and whether it is enabled; $null when it does not exist.
    $rules = @(Receive-Bounded -Job (Get-NetFirewallRule -PolicyStore PersistentStore -Name $RdpTcpRule -AsJob))
    if ($rules.Count -eq 0) {
        return $null
    }
    $port = @((Receive-Bounded -Job (Get-NetFirewallPortFilter -AssociatedNetFirewallRule $rules[0] -AsJob)).LocalPort)[0]
    @{ Rule = $rules[0]; Enabled = ([string]$rules[0].Enabled -eq 'True'); Port = [string]$port }
}

function Test-PortCovers {
    # A port filter's LocalPort list covers the port: 'Any', the port itself, or a range 'low-high' that holds it
    # (New-NetFirewallRule -LocalPort accepts ranges such as 3380-3390).
    param([object[]]$Ports, [int64]$Port)
    foreach ($entry in @($Ports)) {
        $text = [string]$entry
        if ($text -eq 'Any' -or $text -eq [string]$Port) {
            return $true
        }
        $range = [regex]::Match($text, '^(\d+)-(\d+)$')
        if ($range.Success -and [int64]$range.Groups[1].Value -le $Port -and $Port -le [int64]$range.Groups[2].Value) {
            return $true
        }
    }
    $false
}

function Test-AllowPath {
    # An enabled inbound allow rule (active store) for the TCP port on an active profile, or the firewall off on one.
    param([int]$ListenerPort)
    $active = @()
    foreach ($connection in @(Receive-Bounded -Job (Get-NetConnectionProfile -AsJob))) {
        $category = [string]$connection.NetworkCategory
        if ($category -eq 'DomainAuthenticated') {
            $category = 'Domain'
        }
        $active += $category
    }
    foreach ($profile in @(Receive-Bounded -Job (Get-NetFirewallProfile -PolicyStore ActiveStore -AsJob))) {
        if ($active -contains [string]$profile.Name -and [string]$profile.Enabled -ne 'True') {
            return $true
        }
    }
    foreach ($filter in @(Receive-Bounded -Job (Get-NetFirewallPortFilter -PolicyStore ActiveStore -AsJob))) {
        $ports = @($filter.LocalPort | ForEach-Object { [string]$_ })
        if ([string]$filter.Protocol -ne 'TCP' -or -not (Test-PortCovers -Ports $ports -Port $ListenerPort)) {
            continue
        }
        $rule = Receive-Bounded -Job (Get-NetFirewallRule -AssociatedNetFirewallPortFilter $filter -AsJob)
        if ([string]$rule.Enabled -ne 'True' -or [string]$rule.Direction -ne 'Inbound' -or [string]$rule.Action -ne 'Allow') {
            continue
        }
        foreach ($name in $active) {
            if ([string]$rule.Profile -eq 'Any' -or [string]$rule.Profile -like ('*' + $name + '*')) {
                return $true
            }
        }
    }
    $false
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    refused         = $null
    actions         = New-Object -TypeName 'System.Collections.Generic.List[string]'
    findings        = [ordered]@{ rule = $RuleName; enabled_before = $null; enabled_after = $null }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}

try {
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly)
    $state = Get-RdpRuleProfileState
    $copies = @(Receive-Bounded -Job (Get-NetFirewallRule -PolicyStore RSOP -Name $RdpTcpRule -AsJob)).Count
    $listenerPort = [int](Get-RegistryValue -Path $RdpTcpKey -Name 'PortNumber' -Default 3389)
    $refusal = ''
    if ($null -eq $state) {
        $refusal = 'the rule {0} does not exist: not created' -f $RuleName
    }
    elseif ($copies -gt 0) {
        $refusal = 'a Group Policy copy of {0} governs it: the policy''s owner decides' -f $RuleName
    }
    elseif ($state.Port -ne [string]$Port -or $listenerPort -ne $Port) {
        $refusal = '{0} allows TCP {1} and the listener uses {2}, not {3}' -f $RuleName, $state.Port, $listenerPort, $Port
    }
    if ($null -ne $state) {
        $findings.enabled_before = $state.Enabled
        $findings.enabled_after = $state.Enabled
    }
    if ($refusal) {
        $summary.refused = $refusal
        Add-Text -List $summary.actions -Text ('refused: {0}' -f $refusal)
    }
    elseif (Test-AllowPath -ListenerPort $Port) {
        Add-Text -List $summary.actions -Text ('an allow path for TCP {0} exists on the active profile: nothing to do' -f $Port)
    }
    elseif ($state.Enabled) {
        Add-Text -List $summary.actions -Text ('{0} is already enabled and still no allow path exists: not changed' -f $RuleName)
    }
    elseif ($summary.detect_only) {
        Add-Text -List $summary.actions -Text ('would enable {0}' -f $RuleName)
    }
    else {
        $names = @($RdpTcpRule)
        $null = Receive-Bounded -Job (Enable-NetFirewallRule -Name $names -AsJob)
        $summary.changed = $true
        $findings.enabled_after = (Get-RdpRuleProfileState).Enabled
        Add-Text -List $summary.actions -Text ('enabled {0}' -f $RuleName)
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
