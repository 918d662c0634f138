// The Event Grid subscriptions that deliver BlobCreated events to the app's blob triggers (Flex Consumption
// runs blob triggers with source=EventGrid). They need the app's blobs_extension system key, which exists once
// the code is deployed, so azure.yaml's postdeploy hook deploys this after `azd deploy`.
targetScope = 'resourceGroup'

param functionAppName string
param storageAccountName string
param location string = resourceGroup().location

// Each blob trigger (functions/*.py), the setting its path starts with, and that setting's value in main.bicep.
var blobTriggers = [
  { function: 'ingest_landing_file', setting: 'LANDING_CONTAINER', container: 'landing' }
  { function: 'campaign_audience_load', setting: 'DLZ_CONTAINER', container: 'dlz' }
]

resource app 'Microsoft.Web/sites@2024-04-01' existing = { name: functionAppName }
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: storageAccountName }

resource topic 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' = {
  name: '${storageAccountName}-blobs'
  location: location
  properties: { source: storage.id, topicType: 'Microsoft.Storage.StorageAccounts' }
}

var blobsKey = listKeys('${app.id}/host/default', '2024-04-01').systemKeys.blobs_extension

resource subscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2024-06-01-preview' = [for t in blobTriggers: {
  parent: topic
  name: replace(t.function, '_', '-')
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${app.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${t.function}&code=${blobsKey}'
      }
    }
    filter: {
      includedEventTypes: ['Microsoft.Storage.BlobCreated']
      subjectBeginsWith: '/blobServices/default/containers/${t.container}/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: { maxDeliveryAttempts: 30, eventTimeToLiveInMinutes: 1440 }
  }
}]
