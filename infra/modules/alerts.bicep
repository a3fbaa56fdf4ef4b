// Alert wiring: an action group that calls the function's /api/alerts endpoint with the common alert schema,
// a log search alert on the RDP TLS failure events, and (optionally) the VM availability metric alert.
// Existing alert rules can use the same action group (see docs/deploy.md).
@description('Name of the action group.')
param actionGroupName string

@description('Name of the log search alert rule on the RDP TLS failure events.')
param eventsAlertName string

@description('Name prefix of the VM availability metric alerts (one per target scope).')
param availabilityAlertName string

@description('Name of the Function App (in this resource group).')
param functionAppName string

@description('Resource id of the workspace holding the VMs\' System event log.')
param eventsWorkspaceId string

@description('Region of the log search alert rule.')
param location string

@description('Tags.')
param tags object

@description('Create the VM availability metric alerts.')
param enableAvailabilityAlert bool

@description('Subscriptions and resource groups whose VMs the availability alerts watch.')
param availabilityScopes array

@description('Region of the VMs the availability alerts watch (a multi-resource metric alert covers one region).')
param availabilityRegion string

// Event 1057 (listener certificate could not be created) and 1058 (expired certificate could not be replaced)
// come from the Remote Desktop services; Schannel 36870 is the listener's private key being unusable. Group
// Policy logs an unrelated event 1058, hence the source filter (the same as the product's evidence query,
// remediate/azure/queries/rdp_events.kql). Each VM (_ResourceId) becomes its own alert.
var eventsQuery = '''
Event
| where EventLog == 'System'
| where (Source in ('TermService', 'Microsoft-Windows-TerminalServices-RemoteConnectionManager') and EventID in (1057, 1058))
    or (Source == 'Schannel' and EventID == 36870)
| where isnotempty(_ResourceId)
| project TimeGenerated, _ResourceId, Computer, EventID, Source
'''

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'rdpremediate'
    enabled: true
    azureFunctionReceivers: [
      {
        name: 'rdp-remediate'
        functionAppResourceId: site.id
        functionName: 'alerts'
        // The route needs a function key; an action group can carry it only in the URL. The host's default
        // key exists before any code is deployed, unlike a key of the function itself.
        httpTriggerUrl: 'https://${site.properties.defaultHostName}/api/alerts?code=${listKeys('${site.id}/host/default', '2024-04-01').functionKeys.default}'
        useCommonAlertSchema: true
      }
    ]
  }
}

resource eventsAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: eventsAlertName
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'RDP TLS failure events (1057, 1058, 36870)'
    description: 'A Windows VM logged an RDP listener certificate or key failure (RDP error 0x904). Calls rdp-remediate.'
    severity: 2
    enabled: true
    scopes: [
      eventsWorkspaceId
    ]
    // The window overlaps three evaluations so that events ingested late are still seen; the product
    // deduplicates alerts and keeps a cooldown per VM, so an event counted twice does not repair twice.
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: eventsQuery
          timeAggregation: 'Count'
          dimensions: [
            {
              name: '_ResourceId'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    // A resolved notification carries nothing to repair.
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource availabilityAlerts 'Microsoft.Insights/metricAlerts@2018-03-01' = [
  for (target, index) in availabilityScopes: if (enableAvailabilityAlert) {
    name: '${availabilityAlertName}-${index}'
    location: 'global'
    tags: tags
    properties: {
      description: 'A VM in ${target} became unavailable. Calls rdp-remediate, which diagnoses before it repairs.'
      severity: 2
      enabled: true
      scopes: [
        target
      ]
      evaluationFrequency: 'PT1M'
      windowSize: 'PT5M'
      targetResourceType: 'Microsoft.Compute/virtualMachines'
      targetResourceRegion: availabilityRegion
      criteria: {
        'odata.type': 'Microsoft.Azure.Monitor.MultipleResourceMultipleMetricCriteria'
        allOf: [
          {
            criterionType: 'StaticThresholdCriterion'
            name: 'VmUnavailable'
            metricNamespace: 'Microsoft.Compute/virtualMachines'
            metricName: 'VmAvailabilityMetric'
            operator: 'LessThan'
            threshold: 1
            timeAggregation: 'Average'
          }
        ]
      }
      autoMitigate: true
      actions: [
        {
          actionGroupId: actionGroup.id
        }
      ]
    }
  }
]

output actionGroupId string = actionGroup.id
