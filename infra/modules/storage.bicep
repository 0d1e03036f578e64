// The lake: ADLS Gen2 (hierarchical namespace), one container per area and the two queues
// (`bronze-events`, which Event Grid fills, and `gold-build`), no shared keys (every client
// authenticates with Entra ID), TLS 1.2. Private: the public endpoint refuses every network
// except trusted Azure services (Event Grid's managed-identity delivery) and the Databricks
// access connector's resource instance; the Function App reaches it through private endpoints.
param accountName string
param location string
param tags object
@description('The Databricks access connector allowed through the firewall (resource instance rule).')
param databricksConnectorId string
@description('Open the public endpoint to every network (dev, for loading data from a laptop); private otherwise.')
param allowPublicNetwork bool = false

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
    networkAcls: {
      defaultAction: allowPublicNetwork ? 'Allow' : 'Deny'
      bypass: 'AzureServices'
      ipRules: []
      virtualNetworkRules: []
      resourceAccessRules: [
        {
          tenantId: tenant().tenantId
          resourceId: databricksConnectorId
        }
      ]
    }
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

resource queues 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource bronzeEvents 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queues
  name: 'bronze-events'
}

resource goldQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queues
  name: 'gold-build'
}

output accountName string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output lakeUrl string = 'abfss://{area}@${account.name}.dfs.${environment().suffixes.storage}/'
