// The lake: ADLS Gen2 (hierarchical namespace), one container per area, no public access, no
// shared keys (every client authenticates with Entra ID), TLS 1.2.
param accountName string
param location string
param tags object

var areas = ['bronze', 'silver', 'gold', 'system']

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: accountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    isHnsEnabled: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    accessTier: 'Hot'
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for area in areas: {
    parent: blobs
    name: area
    properties: {
      publicAccess: 'None'
    }
  }
]

// Where Flex Consumption keeps the deployed package.
resource deployments 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'deployments'
  properties: {
    publicAccess: 'None'
  }
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource goldQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queues
  name: 'gold-build'
}

output accountName string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output lakeUrl string = 'abfss://{area}@${account.name}.dfs.${environment().suffixes.storage}/'
