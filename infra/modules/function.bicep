// The Function App on Flex Consumption (FC1, Linux, Python): scales to zero, runs as the user-assigned
// identity, pulls its package from a blob container with that identity, and exposes HTTPS only.
@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Region.')
param location string

@description('Tags (the Function App also gets the azd service tag).')
param tags object

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Storage account of the host, queue and ledger.')
param storageAccountName string

@description('URL of the blob container holding the deployment package.')
param deploymentContainerUrl string

@description('Application Insights connection string (no key is usable: local auth is off).')
param appInsightsConnectionString string

@description('Memory of each instance, in MB.')
param instanceMemoryMB int

@description('Most instances the app scales out to.')
param maximumInstanceCount int

@description('Subnet for VNet integration. Empty: none.')
param subnetId string

@description('RDPR_SCOPES: comma-separated subscriptions and resource groups the product may act on.')
param targetScopes string

@description('RDPR_SWEEP_MODE.')
param sweepMode string

@description('RDPR_DRY_RUN.')
param dryRun bool

@description('RDPR_SWEEP_SCHEDULE.')
param sweepSchedule string

@description('RDPR_REQUIRE_OPT_IN.')
param requireOptIn bool

@description('RDPR_OPT_IN_TAG.')
param optInTag string

@description('RDPR_OPT_OUT_TAG.')
param optOutTag string

@description('RDPR_LOG_WORKSPACE_ID: customer id (GUID) of the workspace holding the VMs\' System event log.')
param logWorkspaceCustomerId string

@description('RDPR_QUEUE_NAME: the request queue (created in the storage account).')
param queueName string

@description('RDPR_TABLE_PREFIX: prefix of the ledger\'s tables (created in the storage account).')
param tablePrefix string

@description('Python version of the Flex Consumption runtime.')
param pythonVersion string = '3.11'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // #checkov:skip=CKV_AZURE_225: a scale-to-zero plan with no always-ready instances; an interrupted remediation resumes from the ledger when its queue message is redelivered.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // #checkov:skip=CKV_AZURE_222: Azure Monitor action groups call the function over its public HTTPS endpoint (they cannot reach a private one); every route requires a function key.
  // #checkov:skip=CKV_AZURE_17: action groups cannot present a client certificate; callers authenticate with a function key over TLS 1.2+.
  // #checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero on demand; a failed instance's queue messages are redelivered to another.
  // #checkov:skip=CKV_AZURE_213: App Service health check is not available on Flex Consumption; failures surface in Application Insights and the ledger.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'remediate'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage through the managed identity: no connection string, no key.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storageAccountName
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        // Telemetry through the managed identity (the component refuses instrumentation-key-only data).
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD;ClientId=${identityClientId}'
        }
        // With host.json telemetryMode OpenTelemetry: the Python worker configures Azure Monitor itself and
        // streams the product's log records with their fields as customDimensions (remediate/telemetry.py).
        {
          name: 'PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY'
          value: 'true'
        }
        // azure-identity picks the user-assigned identity by this client id.
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        // The product's settings (remediate/settings.py). The rest keep their documented defaults.
        {
          name: 'RDPR_SCOPES'
          value: targetScopes
        }
        {
          name: 'RDPR_DRY_RUN'
          value: dryRun ? 'true' : 'false'
        }
        {
          name: 'RDPR_SWEEP_MODE'
          value: sweepMode
        }
        {
          name: 'RDPR_SWEEP_SCHEDULE'
          value: sweepSchedule
        }
        {
          // Without VNet integration the probe has no path to private IPs: do not spend the sweep on it.
          name: 'RDPR_SWEEP_PROBE'
          value: empty(subnetId) ? 'false' : 'true'
        }
        {
          name: 'RDPR_REQUIRE_OPT_IN'
          value: requireOptIn ? 'true' : 'false'
        }
        {
          name: 'RDPR_OPT_IN_TAG'
          value: optInTag
        }
        {
          name: 'RDPR_OPT_OUT_TAG'
          value: optOutTag
        }
        {
          name: 'RDPR_LOG_WORKSPACE_ID'
          value: logWorkspaceCustomerId
        }
        {
          name: 'RDPR_QUEUE_NAME'
          value: queueName
        }
        {
          name: 'RDPR_TABLE_PREFIX'
          value: tablePrefix
        }
        {
          // The cloud this is deployed to (public, government, China): Resource Manager's endpoint.
          name: 'RDPR_ARM_URL'
          value: environment().resourceManager
        }
        // Polling cadence: Compute's long-running operations carry no Retry-After, and the SDK would then wait
        // 30 s between polls. Poll every 2 s for the first minute (most Run Commands end within it), then back
        // off to at most 10 s (docs/architecture.md, "Polling cadence").
        {
          name: 'RDPR_POLL_INTERVAL_SECONDS'
          value: '2'
        }
        {
          name: 'RDPR_POLL_FAST_SECONDS'
          value: '60'
        }
        {
          name: 'RDPR_POLL_MAX_INTERVAL_SECONDS'
          value: '10'
        }
      ]
    }
  }
}

// Deployment goes through the identity-authenticated package container; FTP and SCM basic auth stay off.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output id string = site.id
output url string = 'https://${site.properties.defaultHostName}'
