<#
.SYNOPSIS
    Enables server-side TLS 1.2 in SCHANNEL when it is turned off (Schannel event 36871). A reboot is required.

.DESCRIPTION
    TLS 1.2 is on by default; it is off when HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\
    Protocols\TLS 1.2\Server has Enabled = 0 or DisabledByDefault = 1. The script then sets Enabled = 1 and
    DisabledByDefault = 0 (DWORD), the documented values, and touches nothing else: no other protocol, cipher or
    client-side setting. SCHANNEL reads these values at boot.

.PARAMETER DetectOnly
    'true' reports what would be set and changes nothing. Default 'false'.

.OUTPUTS
    Progress lines, then one compact ASCII JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: set the previous values (listed in the actions) under the same key and reboot.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'enable-tls12'
$ScriptVersion = '2.0.0'

$Tls12ServerKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols\TLS 1.2\Server'

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

function Test-Tls12ServerEnabled {
    # SCHANNEL's TLS 1.2 server side is on unless its registry key turns it off.
    $enabled = Get-RegistryValue -Path $Tls12ServerKey -Name 'Enabled' -Default 1
    $disabledByDefault = Get-RegistryValue -Path $Tls12ServerKey -Name 'DisabledByDefault' -Default 0
    ($enabled -ne 0) -and ($disabledByDefault -eq 0)
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    refused         = $null
    actions         = New-Object -TypeName 'System.Collections.Generic.List[string]'
    findings        = [ordered]@{ enabled_before = $false; enabled_after = $false }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}

try {
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly)
    $findings.enabled_before = Test-Tls12ServerEnabled
    $findings.enabled_after = $findings.enabled_before
    $previous = 'Enabled={0}, DisabledByDefault={1}' -f (Get-RegistryValue -Path $Tls12ServerKey -Name 'Enabled' -Default 'unset'), (Get-RegistryValue -Path $Tls12ServerKey -Name 'DisabledByDefault' -Default 'unset')

    if ($findings.enabled_before) {
        Add-Text -List $summary.actions -Text 'TLS 1.2 is enabled on the server side: nothing to do'
    }
    elseif ($summary.detect_only) {
        Add-Text -List $summary.actions -Text ('would set Enabled=1 and DisabledByDefault=0 under {0} (now {1}); a reboot would follow' -f $Tls12ServerKey, $previous)
    }
    else {
        if (-not (Test-Path -LiteralPath $Tls12ServerKey)) {
            $null = New-Item -Path $Tls12ServerKey -Force
        }
        $null = New-ItemProperty -LiteralPath $Tls12ServerKey -Name 'Enabled' -PropertyType DWord -Value 1 -Force
        $null = New-ItemProperty -LiteralPath $Tls12ServerKey -Name 'DisabledByDefault' -PropertyType DWord -Value 0 -Force
        $summary.changed = $true
        $summary.reboot_required = $true
        $findings.enabled_after = Test-Tls12ServerEnabled
        Add-Text -List $summary.actions -Text ('set Enabled=1 and DisabledByDefault=0 under {0} (was {1}); reboot to apply' -f $Tls12ServerKey, $previous)
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
