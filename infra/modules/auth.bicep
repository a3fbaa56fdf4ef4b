// App Service authentication (Microsoft Entra ID) in front of the HTTP API: the runbook, status, release and
// approval routes need a Microsoft Entra token for the app registration; the platform then injects the caller as
// X-MS-CLIENT-PRINCIPAL, which the product records and checks for the approver app role. The alert route is
// excluded: an action group calls it with the function key only.
@description('Name of the Function App.')
param functionAppName string

@description('Client (application) id of the Microsoft Entra app registration that callers get tokens for.')
param clientId string

@description('Tenant of that app registration.')
param tenantId string = tenant().tenantId

resource site 'Microsoft.Web/sites@2023-12-01' existing = {
  name: functionAppName
}

resource auth 'Microsoft.Web/sites/config@2023-12-01' = {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/api/alerts'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${clientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}
