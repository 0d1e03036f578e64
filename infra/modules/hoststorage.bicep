// The Function App's own storage, apart from the lake: the host's state (timer schedules,
// locks), the deployed package (Flex Consumption), and Event Grid's dead letters. Only the
// app's identity and the Event Grid topic reach it; nothing with lake access can replace the
// package the app loads. Same hardening as the lake, without the hierarchical namespace.
param accountName string
param location string
param tags object
@description('Open the public endpoint to every network (dev, for loading data from a laptop); private otherwise.')
param allowPublicNetwork bool = false

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: accountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    isHnsEnabled: false
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: allowPublicNetwork ? 'Allow' : 'Deny'
      bypass: 'AzureServices'
      ipRules: []
      virtualNetworkRules: []
    }
    accessTier: 'Hot'
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

// Where Flex Consumption keeps the deployed package.
resource deployments 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'deployments'
  properties: {
    publicAccess: 'None'
  }
}

// Bronze events Event Grid could not deliver: kept, and the catch-up timer loads their files.
resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'eventgrid-deadletter'
  properties: {
    publicAccess: 'None'
  }
}

output accountName string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
