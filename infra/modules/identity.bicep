// The Function's one identity: a user-assigned managed identity, so that its role assignments exist before
// the app does and survive a re-created app.
@description('Name of the user-assigned managed identity.')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
