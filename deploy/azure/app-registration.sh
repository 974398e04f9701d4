#!/usr/bin/env bash
# Registers scanhook's API in Entra ID and lets Azure senders call it with
# Entra ID tokens instead of shared secrets (docs/entra-id.md):
#
#   1. an app registration for scanhook with an app ID URI (api://<client id>)
#      and one application role, Alerts.Submit;
#   2. its service principal, with role assignment required, so that only
#      identities granted Alerts.Submit can get a token for scanhook at all;
#   3. Alerts.Submit granted to the senders: the Sentinel forwarding Logic
#      App's managed identity (LOGIC_APP_PRINCIPAL_ID, the principalId output
#      of sentinel-logic-app.json) and, with GRANT_ACTION_GROUPS=1, Azure
#      Monitor's action-group service principal used by secure webhooks;
#   4. the sources.*.auth.entra block to paste into scanhook's config.
#
# Needs: az (logged in to the tenant, allowed to create app registrations
# and grant app roles), jq, uuidgen. For a government cloud, run
# `az cloud set --name AzureUSGovernment` first and set defender.cloud in
# scanhook's config: the token endpoints and keys follow it.
#
# Usage:
#   LOGIC_APP_PRINCIPAL_ID=<principalId> GRANT_ACTION_GROUPS=1 ./app-registration.sh
set -euo pipefail

APP_NAME=${APP_NAME:-scanhook}
ROLE=${ROLE:-Alerts.Submit}
# Azure Monitor's first-party app that sends action-group secure webhooks
# ("Azure Monitor Action Group", as in Microsoft's secure webhook script).
ACTION_GROUPS_APP_ID=461e8683-5575-4561-ac7f-899cc907d62a
GRAPH=${GRAPH:-https://graph.microsoft.com}

tenant_id=$(az account show --query tenantId -o tsv)

# 1. The app registration, its app ID URI and its app role.
app_id=$(az ad app list --display-name "$APP_NAME" --query '[0].appId' -o tsv)
if [[ -z "$app_id" ]]; then
  app_id=$(az ad app create --display-name "$APP_NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)
fi
app_object_id=$(az ad app show --id "$app_id" --query id -o tsv)
app_id_uri="api://$app_id"
az ad app update --id "$app_id" --identifier-uris "$app_id_uri"

role_id=$(az ad app show --id "$app_id" --query "appRoles[?value=='$ROLE'].id | [0]" -o tsv)
if [[ -z "$role_id" ]]; then
  role_id=$(uuidgen)
  roles=$(az ad app show --id "$app_id" --query appRoles -o json | jq --arg id "$role_id" --arg v "$ROLE" \
    '. + [{id: $id, value: $v, displayName: $v, isEnabled: true,
           description: "Submit alerts to scanhook (webhook senders)",
           allowedMemberTypes: ["Application"]}]')
  az ad app update --id "$app_id" --app-roles "$roles"
fi

# 2. The service principal; only assigned identities get tokens.
sp_id=$(az ad sp list --filter "appId eq '$app_id'" --query '[0].id' -o tsv)
if [[ -z "$sp_id" ]]; then
  sp_id=$(az ad sp create --id "$app_id" --query id -o tsv)
fi
az ad sp update --id "$sp_id" --set appRoleAssignmentRequired=true

# 3. Grant the role to a service principal (by object id), once.
grant() {
  local principal=$1
  local have
  have=$(az rest --method GET --uri "$GRAPH/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --query "value[?resourceId=='$sp_id' && appRoleId=='$role_id'] | length(@)" -o tsv)
  if [[ "$have" == "0" ]]; then
    az rest --method POST --uri "$GRAPH/v1.0/servicePrincipals/$principal/appRoleAssignments" \
      --headers Content-Type=application/json \
      --body "{\"principalId\":\"$principal\",\"resourceId\":\"$sp_id\",\"appRoleId\":\"$role_id\"}" >/dev/null
  fi
}

logic_app_client_id=""
if [[ -n "${LOGIC_APP_PRINCIPAL_ID:-}" ]]; then
  grant "$LOGIC_APP_PRINCIPAL_ID"
  logic_app_client_id=$(az ad sp show --id "$LOGIC_APP_PRINCIPAL_ID" --query appId -o tsv)
fi
if [[ "${GRANT_ACTION_GROUPS:-0}" == "1" ]]; then
  ag_sp=$(az ad sp list --filter "appId eq '$ACTION_GROUPS_APP_ID'" --query '[0].id' -o tsv)
  if [[ -z "$ag_sp" ]]; then
    ag_sp=$(az ad sp create --id "$ACTION_GROUPS_APP_ID" --query id -o tsv)
  fi
  grant "$ag_sp"
fi

# 4. What scanhook needs.
cat <<YAML
# scanhook's app registration: client id $app_id, object id $app_object_id
# (the action group template's scanhookAppObjectId), app ID URI $app_id_uri.
sources:
YAML
if [[ -n "$logic_app_client_id" ]]; then
  cat <<YAML
  sentinel:
    auth:
      entra:
        tenant_ids: [$tenant_id]
        audiences: [$app_id_uri, $app_id]
        allowed_client_ids: [$logic_app_client_id]
        allowed_object_ids: [$LOGIC_APP_PRINCIPAL_ID]
        required_roles: [$ROLE]
YAML
fi
if [[ "${GRANT_ACTION_GROUPS:-0}" == "1" ]]; then
  cat <<YAML
  azuremonitor:
    auth:
      entra:
        tenant_ids: [$tenant_id]
        audiences: [$app_id_uri, $app_id]
        allowed_client_ids: [$ACTION_GROUPS_APP_ID]
        required_roles: [$ROLE]
YAML
fi
