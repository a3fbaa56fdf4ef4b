// An Azure Monitor workbook built around what an operator asks, read from the Application Insights traces the
// product writes through OpenTelemetry (remediate/telemetry.py): every record's fields are customDimensions, and
// `customDimensions.event` names the record: remediation.outcome, remediation.step, sweep.vm, sweep.summary.
// Each query is a plain KQL string in its own variable (query...), so that it can be extracted and checked
// against that schema. {Subscription} and {ResourceGroup} are workbook parameters ('*' = all), substituted
// inside string literals only.
@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Resource id of the Application Insights component.')
param appInsightsId string

@description('Environment name, shown in the workbook title.')
param environmentName string

// Outcomes over time: one remediation.outcome record per finished request.
var queryOutcomesOverTime = '''
traces
| where tostring(customDimensions.event) == "remediation.outcome"
| where "{Subscription}" == "*" or tostring(customDimensions.subscriptionId) =~ "{Subscription}"
| where "{ResourceGroup}" == "*" or tostring(customDimensions.resourceGroup) =~ "{ResourceGroup}"
| summarize Remediations = count() by Outcome = tostring(customDimensions.outcome), bin(timestamp, 1h)
'''

// Per-VM history: every request, newest first, with the step that failed and the reason.
var queryVmHistory = '''
traces
| where tostring(customDimensions.event) == "remediation.outcome"
| where "{Subscription}" == "*" or tostring(customDimensions.subscriptionId) =~ "{Subscription}"
| where "{ResourceGroup}" == "*" or tostring(customDimensions.resourceGroup) =~ "{ResourceGroup}"
| where "{VmName}" == "*" or tostring(customDimensions.vmName) =~ "{VmName}"
| project timestamp, VM = tostring(customDimensions.vmName), ResourceGroup = tostring(customDimensions.resourceGroup),
    Outcome = tostring(customDimensions.outcome), FailedStep = tostring(customDimensions.failedStep),
    Reason = tostring(customDimensions.reason), Trigger = tostring(customDimensions.trigger),
    RequestId = tostring(customDimensions.requestId), Trace = operation_Id
| order by timestamp desc
| take 500
'''

// VMs that keep failing: two or more failed requests in the time range, with the steps they failed at.
var queryKeepFailing = '''
traces
| where tostring(customDimensions.event) == "remediation.outcome"
| where "{Subscription}" == "*" or tostring(customDimensions.subscriptionId) =~ "{Subscription}"
| where "{ResourceGroup}" == "*" or tostring(customDimensions.resourceGroup) =~ "{ResourceGroup}"
| where tostring(customDimensions.outcome) == "failed"
| summarize Failures = count(), LastFailure = max(timestamp), FailedSteps = make_set(tostring(customDimensions.failedStep)),
    LastReason = take_any(tostring(customDimensions.reason)) by VM = tostring(customDimensions.vm)
| where Failures >= 2
| order by Failures desc, LastFailure desc
'''

// Certificates expiring soon: the newest sweep observation of each VM, counted by the week its certificate ends.
var queryExpiryForecast = '''
traces
| where tostring(customDimensions.event) == "sweep.vm"
| where "{Subscription}" == "*" or tostring(customDimensions.subscriptionId) =~ "{Subscription}"
| where "{ResourceGroup}" == "*" or tostring(customDimensions.resourceGroup) =~ "{ResourceGroup}"
| where isnotempty(tostring(customDimensions.notAfter))
| extend VM = tostring(customDimensions.vm), NotAfter = todatetime(customDimensions.notAfter)
| summarize arg_max(timestamp, NotAfter) by VM
| where NotAfter < now() + 56d
| extend Week = iff(NotAfter < now(), datetime(null), startofweek(NotAfter))
| summarize Certificates = count() by Week = iff(isnull(Week), "expired", format_datetime(Week, "yyyy-MM-dd"))
| order by Week asc
'''

// Sweep findings held back: what the blast radius (or the circuit breaker) kept from being queued, and why.
var queryHeldBack = '''
traces
| where tostring(customDimensions.event) == "sweep.vm"
| where "{Subscription}" == "*" or tostring(customDimensions.subscriptionId) =~ "{Subscription}"
| where "{ResourceGroup}" == "*" or tostring(customDimensions.resourceGroup) =~ "{ResourceGroup}"
| where tostring(customDimensions.disposition) == "held-back"
| project timestamp, VM = tostring(customDimensions.vmName), ResourceGroup = tostring(customDimensions.resourceGroup),
    Finding = tostring(customDimensions.finding), ProbeStatus = tostring(customDimensions.probeStatus),
    Reason = tostring(customDimensions.dispositionReason), Sweep = tostring(customDimensions.sweepId)
| order by timestamp desc
| take 500
'''

var queryItemDefaults = {
  version: 'KqlItem/1.0'
  size: 0
  timeContextFromParameter: 'TimeRange'
  queryType: 0
  resourceType: 'microsoft.insights/components'
}

var content = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'title'
      content: {
        json: '## RDP remediation (${environmentName})\nWhat happened, what keeps failing, which RDP certificates expire soon, and what the sweep held back.'
      }
    }
    {
      type: 9
      name: 'parameters'
      content: {
        version: 'KqlParameterItem/1.0'
        parameters: [
          {
            id: guid('rdp-remediation-outcomes', 'TimeRange')
            version: 'KqlParameterItem/1.0'
            name: 'TimeRange'
            type: 4
            isRequired: true
            value: {
              durationMs: 604800000
            }
            typeSettings: {
              selectableValues: [
                {
                  durationMs: 86400000
                }
                {
                  durationMs: 604800000
                }
                {
                  durationMs: 2592000000
                }
              ]
              allowCustom: true
            }
          }
          {
            id: guid('rdp-remediation-outcomes', 'Subscription')
            version: 'KqlParameterItem/1.0'
            name: 'Subscription'
            label: 'Subscription id (* = all)'
            type: 1
            isRequired: true
            value: '*'
          }
          {
            id: guid('rdp-remediation-outcomes', 'ResourceGroup')
            version: 'KqlParameterItem/1.0'
            name: 'ResourceGroup'
            label: 'Resource group (* = all)'
            type: 1
            isRequired: true
            value: '*'
          }
          {
            id: guid('rdp-remediation-outcomes', 'VmName')
            version: 'KqlParameterItem/1.0'
            name: 'VmName'
            label: 'VM name (* = all)'
            type: 1
            isRequired: true
            value: '*'
          }
        ]
      }
    }
    {
      type: 3
      name: 'outcomes over time'
      content: union(queryItemDefaults, {
        title: 'Outcomes per hour'
        query: queryOutcomesOverTime
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'expiry forecast'
      content: union(queryItemDefaults, {
        title: 'RDP listener certificates expiring, by week (newest sweep observation per VM)'
        query: queryExpiryForecast
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'keep failing'
      content: union(queryItemDefaults, {
        title: 'VMs that keep failing (2 or more failed requests)'
        query: queryKeepFailing
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'held back'
      content: union(queryItemDefaults, {
        title: 'Sweep findings held back by the blast radius or the circuit breaker'
        query: queryHeldBack
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'vm history'
      content: union(queryItemDefaults, {
        title: 'Per-VM history: outcome, failed step and reason (filter with VM name)'
        query: queryVmHistory
        visualization: 'table'
      })
    }
  ]
  fallbackResourceIds: [
    appInsightsId
  ]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsightsId, 'rdp-remediation-outcomes')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'RDP remediation outcomes (${environmentName})'
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: string(content)
  }
}
