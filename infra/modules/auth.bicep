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
  // checkov reads every Microsoft.Web/sites/config resource as the site's web configuration; this one is only the
  // authentication configuration (authsettingsV2), so its web-configuration checks do not apply to it:
  // #checkov:skip=CKV_AZURE_13: this resource IS the App Service authentication (authsettingsV2, Microsoft Entra ID); the check reads the older authSettings (V1) shape.
  // #checkov:skip=CKV_AZURE_222: the alert route must stay reachable from action groups over the public endpoint (see function.bicep); this resource adds authentication in front of the rest.
  // #checkov:skip=CKV_AZURE_63: HTTP logging is a web configuration setting (sites/config 'web'), not part of authsettingsV2; telemetry goes to Application Insights.
  // #checkov:skip=CKV_AZURE_65: detailed error messages are a web configuration setting (sites/config 'web'), not part of authsettingsV2.
  // #checkov:skip=CKV_AZURE_66: failed request tracing is a web configuration setting (sites/config 'web'), not part of authsettingsV2.
  // #checkov:skip=CKV_AZURE_80: a Python app on Linux has no .NET Framework version; nothing in authsettingsV2 sets one.
  // #checkov:skip=CKV_AZURE_88: Azure Files mounts are storage configuration, not part of authsettingsV2; the app keeps no files.
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
