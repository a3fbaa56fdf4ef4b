// An Azure Monitor workbook of remediation outcomes over time, read from the Application Insights traces the
// product writes (each outcome is a trace with an `outcome` custom dimension).
@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Resource id of the Application Insights component.')
param appInsightsId string

@description('Environment name, shown in the workbook title.')
param environmentName string

var outcomesOverTime = '''
traces
| where isnotempty(customDimensions.outcome)
| summarize Remediations = count() by Outcome = tostring(customDimensions.outcome), bin(timestamp, 1h)
'''

var outcomeTotals = '''
traces
| where isnotempty(customDimensions.outcome)
| summarize Remediations = count() by Outcome = tostring(customDimensions.outcome)
| order by Remediations desc
'''

var recentOutcomes = '''
traces
| where isnotempty(customDimensions.outcome)
| project timestamp, Outcome = tostring(customDimensions.outcome), Message = message, Details = customDimensions
| order by timestamp desc
| take 200
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
        json: '## RDP remediation outcomes (${environmentName})\nEvery remediation ends in one outcome; failed and unverified ones need a look.'
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
        ]
      }
    }
    {
      type: 3
      name: 'outcomes over time'
      content: union(queryItemDefaults, {
        title: 'Outcomes per hour'
        query: outcomesOverTime
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'outcome totals'
      content: union(queryItemDefaults, {
        title: 'Outcomes in the time range'
        query: outcomeTotals
        visualization: 'piechart'
      })
    }
    {
      type: 3
      name: 'recent outcomes'
      content: union(queryItemDefaults, {
        title: 'Latest outcomes'
        query: recentOutcomes
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
