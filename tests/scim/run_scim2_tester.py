#!/usr/bin/env python3
"""Run scim2-tester (an independent SCIM 2.0 checker) against a live endpoint.

usage: run_scim2_tester.py BASE_URL   (the bearer token in $SCIM_TOKEN; for an
https:// endpoint under a private CA, that CA's PEM file in $SCIM_CA_FILE)
Prints one JSON object per check: status, resource_type, title, reason.
"""
import json
import os
import ssl
import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import check_server

base = sys.argv[1]
token = os.environ["SCIM_TOKEN"]
ca = os.environ.get("SCIM_CA_FILE")
verify = ssl.create_default_context(cafile=ca) if ca else True
client = SyncSCIMClient(
    Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, verify=verify)
)
for r in check_server(client):
    print(json.dumps({
        "status": r.status.name,
        "resource_type": r.resource_type,
        "title": r.title,
        "reason": str(r.reason or ""),
    }))
