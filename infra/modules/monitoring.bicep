// Application Insights on a Log Analytics workspace, for the Function App's logs and traces.
// Entra-only ingestion: the app's identity publishes with Monitoring Metrics Publisher
// (roles.bicep); the connection string's key alone is refused.
param name string
param location string
param tags object

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

output connectionString string = insights.properties.ConnectionString
output name string = insights.name
