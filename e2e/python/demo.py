"""`make demo`: the platform flow of the README for a person to watch, on the
local control plane that e2e/demo started.

Installs Tenantgate with Helm, runs the operator as the chart's ServiceAccount
(no container runs here: it is a process, like in `make e2e`), applies the
quickstart tenant with kubectl, waits for it, prints the Tenantgate objects,
starts the tenant's gateway as its pod would run it (from the ConfigMap and
Secrets the operator wrote) and asks it a question with the official openai
SDK. The processes keep running after this script; their PIDs go to
$TENANTGATE_E2E_WORK/pids for `make demo-down`.
"""

from __future__ import annotations

import os
import sys

import e2e_support as e2e
import tenant_app as app
from e2e_support import EXAMPLES, OPERATOR_NAMESPACE, ROOT, GatewayPod, Operator, kubectl, mint_token, run


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    gateway_bin, operator_bin = os.environ["GATEWAY_BIN"], e2e.env("TENANTGATE_OPERATOR_BIN")
    pids = e2e.WORK / "pids"

    step("helm upgrade --install tenantgate charts/tenantgate --namespace tenantgate-system --create-namespace")
    print(run(["helm", "upgrade", "--install", "tenantgate", str(ROOT / "charts/tenantgate"),
               "--namespace", OPERATOR_NAMESPACE, "--create-namespace"]))
    kubectl("wait", "--for=condition=Established", "crd/tenants.tenantgate.dev", "--timeout=60s")

    step("the operator, as the chart's ServiceAccount")
    operator = Operator(operator_bin)
    pids.write_text(f"{operator.process.pid}\n")
    print(f"operator pid {operator.process.pid}, metrics at {operator.url}/metrics, log {operator.process.log}")

    step("kubectl apply -f manifests/examples/quickstart/")
    print(kubectl("apply", "-f", str(EXAMPLES / "quickstart")))
    step("kubectl wait --for=condition=Ready tenant/quickstart --timeout=2m")
    print(kubectl("wait", "--for=condition=Ready", "tenant/quickstart", "--timeout=2m", timeout=150))

    step("kubectl get tenants,mcpconnections,promptpolicies -A")
    print(kubectl("get", "tenants,mcpconnections,promptpolicies", "-A"))
    step("kubectl get deploy,svc,hpa,pdb,networkpolicy,configmap,secret -n tg-quickstart")
    print(kubectl("get", "deploy,svc,hpa,pdb,networkpolicy,configmap,secret", "-n", "tg-quickstart"))

    step("the quickstart's gateway, as its pod runs it")
    gateway = GatewayPod("quickstart", gateway_bin)
    with pids.open("a") as f:
        f.write(f"{gateway.process.pid}\n")
    print(f"gateway pid {gateway.process.pid} at {gateway.url}, log {gateway.process.log}")

    step("a chat through the gateway with the openai SDK")
    token = mint_token(gateway_bin, EXAMPLES / "quickstart", EXAMPLES / "quickstart/dev-signing-key.pem",
                       "demo@quickstart.example")
    question = "Hello from make demo!"
    print(f"user: {question}")
    print(f"assistant: {app.chat(gateway.url, token, 'chat-default', question)}")

    print(f"""
Tenantgate is running on the local control plane. Try:

  export KUBECONFIG={os.environ['KUBECONFIG']}
  export PATH={os.environ['TENANTGATE_BIN']}:$PATH    # the pinned kubectl and helm
  kubectl get tenantgate -A
  TOKEN=$(make -s token)
  curl -s {gateway.url}/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "chat-default", "messages": [{{"role": "user", "content": "Hi"}}]}}'

Logs: {e2e.WORK}. Tear it all down with: make demo-down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
