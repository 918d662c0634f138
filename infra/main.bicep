// Audience Bridge on Azure: a Flex Consumption Function App (Python 3.11) with its storage account (every
// container and queue the app uses; tables are made by the app on first use), reached with a user-assigned
// managed identity (no keys in settings), Application Insights, and every app setting the code reads.
// `azd up` deploys it (azure.yaml); the Event Grid subscriptions of the blob triggers need the app's blobs
// extension key, so they come after the code (infra/eventgrid.bicep, azure.yaml's postdeploy hook).
targetScope = 'resourceGroup'

@description('A short name for this deployment; resource names derive from it.')
param environmentName string

@description('Where everything runs.')
param location string = resourceGroup().location

@description('How many instances the platform may scale out to.')
param maximumInstanceCount int = 100

@description('Memory per instance (MB): segment jobs and exports size DuckDB to it.')
@allowed([2048, 4096])
param instanceMemoryMB int = 2048

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = { 'azd-env-name': environmentName }

// The names the app reads from its settings (shared/settings.py defaults): the same on both sides.
var containers = {
  landing: 'landing'
  lake: 'lake'
  segments: 'segments'
  profiles: 'profiles'
  dlz: 'dlz'
  campaign: 'campaign'
}
var queues = {
  segmentJobs: 'segment-jobs'
  segmentShards: 'segment-shards'
  profileJobs: 'profile-jobs'
  exportRuns: 'export-runs'
  alertDeliveries: 'alert-deliveries'
}
var deploymentContainer = 'app-package'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${token}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity only
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
  resource blobs 'blobServices' = {
    name: 'default'
    resource dataContainers 'containers' = [for c in items(containers): { name: c.value }]
    resource packageContainer 'containers' = { name: deploymentContainer }
  }
  resource queueService 'queueServices' = {
    name: 'default'
    resource appQueues 'queues' = [for q in items(queues): { name: q.value }]
  }
  resource tableService 'tableServices' = { name: 'default' }
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${token}'
  location: location
  tags: tags
}

// Storage Blob Data Owner, Storage Queue Data Contributor, Storage Table Data Contributor.
var storageRoles = [
  'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
]
resource storageAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in storageRoles: {
  name: guid(storage.id, identity.id, role)
  scope: storage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${token}'
  location: location
  tags: tags
  properties: { sku: { name: 'PerGB2018' }, retentionInDays: 30 }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: { Application_Type: 'web', WorkspaceResourceId: logs.id, DisableLocalAuth: true }
}

// Monitoring Metrics Publisher: the app sends telemetry with its identity.
resource insightsAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, '3913510d-42f4-4e42-8a64-420c390055eb')
  scope: insights
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '3913510d-42f4-4e42-8a64-420c390055eb')
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${token}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-${token}'
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: { type: 'UserAssignedIdentity', userAssignedIdentityResourceId: identity.id }
        }
      }
      scaleAndConcurrency: { maximumInstanceCount: maximumInstanceCount, instanceMemoryMB: instanceMemoryMB }
      runtime: { name: 'python', version: '3.11' }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        // The runtime's storage and the app's, by identity (AzureWebJobsStorage itself stays unset).
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
        { name: 'AzureWebJobsFeatureFlags', value: 'EnableWorkerIndexing' }
        // Flex Consumption has no container scan: blob triggers come from Event Grid.
        { name: 'BLOB_TRIGGER_SOURCE', value: 'EventGrid' }
        { name: 'LANDING_CONTAINER', value: containers.landing }
        { name: 'LAKE_CONTAINER', value: containers.lake }
        { name: 'SEGMENTS_CONTAINER', value: containers.segments }
        { name: 'PROFILES_CONTAINER', value: containers.profiles }
        { name: 'DLZ_CONTAINER', value: containers.dlz }
        { name: 'CAMPAIGN_CONTAINER', value: containers.campaign }
        { name: 'TABLE_PREFIX', value: '' }
        { name: 'SEGMENT_JOBS_QUEUE', value: queues.segmentJobs }
        { name: 'SEGMENT_SHARDS_QUEUE', value: queues.segmentShards }
        { name: 'SEGMENT_SHARD_TIMEOUT_SECONDS', value: '1800' }
        { name: 'PROFILE_JOBS_QUEUE', value: queues.profileJobs }
        { name: 'EXPORT_RUNS_QUEUE', value: queues.exportRuns }
        { name: 'ALERT_DELIVERIES_QUEUE', value: queues.alertDeliveries }
        { name: 'INGESTION_MAX_FILE_BYTES', value: '2147483648' }
        { name: 'INGESTION_MAX_WHOLE_FILE_BYTES', value: '268435456' }
        { name: 'INGESTION_CHUNK_BYTES', value: '67108864' }
        { name: 'INGESTION_MAX_REJECTED_RATIO', value: '0.005' }
        { name: 'IDENTITY_GRAPH_LIMIT', value: '50' }
        { name: 'PROFILE_SHARDS', value: '8' }
        { name: 'WORKER_CACHE_MB', value: 'auto' }
        { name: 'PREVIEW_SAMPLE_PROFILES', value: '250000' }
        { name: 'PROFILE_VERSION_RETENTION_HOURS', value: '168' }
        { name: 'PROFILE_RETENTION_SCHEDULE', value: '0 45 3 * * *' }
        { name: 'SEGMENT_SCHEDULE', value: '0 0 2 * * *' }
        { name: 'STREAMING_SCHEDULE', value: '0 */5 * * * *' }
        { name: 'SEGMENT_EXITED_RETENTION_DAYS', value: '30' }
        { name: 'EXPORT_SCHEDULE', value: '0 5 * * * *' }
        { name: 'EXPORT_SPLIT_ROWS', value: '5000000' }
        { name: 'EXPORT_PHONE_COUNTRY_CODE', value: '1' }
        { name: 'DLZ_RETENTION_DAYS', value: '7' }
        { name: 'DLZ_RETENTION_SCHEDULE', value: '0 30 3 * * *' }
        { name: 'JOB_LEASE_SECONDS', value: '300' }
        { name: 'RECIPIENTS_DELTA_RATIO', value: '0.25' }
        { name: 'SNAPSHOT_RETENTION_HOURS', value: '72' }
        { name: 'SNAPSHOT_RETENTION_SCHEDULE', value: '0 15 * * * *' }
        { name: 'CAMPAIGN_LOG_SCHEDULE', value: '0 0 */4 * * *' }
        { name: 'CAMPAIGN_FEEDBACK_DATASET', value: 'campaign-logs' }
        { name: 'MONITOR_SCHEDULE', value: '0 */15 * * * *' }
        { name: 'ALERT_REJECTED_RATE', value: '0.005' }
        { name: 'ALERT_EXCLUDED_RATE', value: '0.01' }
        { name: 'ALERT_DELAY_MINUTES', value: '150' }
        { name: 'ALERT_SIZE_CHANGE', value: '0.5' }
        { name: 'WEBHOOK_ALLOW_PRIVATE', value: 'false' }
        { name: 'WEBHOOK_RETRY_SECONDS', value: '30' }
        { name: 'WEBHOOK_RETRY_HOURS', value: '24' }
        // DuckDB gets 40% of an instance's memory and spills the rest to local disk: at 10M people a batch's
        // process peaks at about 1 GB with 600MB (README, Benchmarks, 10M people).
        { name: 'DUCKDB_MEMORY_LIMIT', value: '${instanceMemoryMB * 4 / 10}MB' }
        { name: 'DUCKDB_THREADS', value: '2' }
      ]
    }
  }
  dependsOn: [storageAccess, insightsAccess]
}

output AZURE_FUNCTION_APP_NAME string = app.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.name
output AZURE_FUNCTION_URL string = 'https://${app.properties.defaultHostName}'
output LANDING_CONTAINER string = containers.landing
output DLZ_CONTAINER string = containers.dlz
