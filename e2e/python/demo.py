"""`make demo`: the platform flow of the README for a person to watch, on the
local cluster that e2e/demo started (a control plane and a real node running
the images of `make images`).

Installs Tenantgate with Helm (the operator runs as the chart's Deployment),
applies the quickstart tenant with kubectl, waits for it, prints the
Tenantgate objects and the pods, forwards the tenant's gateway Service to this
machine with `kubectl port-forward` as the README does, and asks it a question
with the official openai SDK. The port-forward keeps running after this
script; its PID goes to $TENANTGATE_E2E_WORK/pids for `make demo-down`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import e2e_support as e2e
import tenant_app as app
from e2e_support import EXAMPLES, OPERATOR_NAMESPACE, ROOT, Operator, StepFailed, kubectl, mint_token, run


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def port_forward(namespace: str, target: str, port: int) -> tuple[subprocess.Popen, str]:
    """`kubectl port-forward` on a free local port, left running; (process, URL).
    Its output goes to a log file, not a pipe: it prints a line per connection,
    and a pipe would close with this script."""
    log = e2e.WORK / f"port-forward-{namespace}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(["kubectl", "-n", namespace, "port-forward", target, f":{port}"],
                                stdout=out, stderr=out, start_new_session=True)

    def forwarding():
        if proc.poll() is not None:
            raise StepFailed(f"kubectl port-forward exited ({proc.returncode}); log:\n{e2e.tail(log)}")
        return re.search(r"Forwarding from (127\.0\.0\.1:\d+) ->", log.read_text())

    match = e2e.wait_for("kubectl port-forward listening", forwarding, 60, 0.2)
    return proc, f"http://{match.group(1)}"


def main() -> int:
    gateway_bin = os.environ["GATEWAY_BIN"]
    pids = e2e.WORK / "pids"

    step("helm upgrade --install tenantgate charts/tenantgate --namespace tenantgate-system --create-namespace")
    print(run(["helm", "upgrade", "--install", "tenantgate", str(ROOT / "charts/tenantgate"),
               "--namespace", OPERATOR_NAMESPACE, "--create-namespace"]))
    kubectl("wait", "--for=condition=Established", "crd/tenants.tenantgate.dev", "--timeout=60s")

    step("kubectl -n tenantgate-system rollout status deployment/tenantgate-operator")
    Operator()
    print(kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"))

    step("kubectl apply -f manifests/examples/quickstart/")
    print(kubectl("apply", "-f", str(EXAMPLES / "quickstart")))
    step("kubectl wait --for=condition=Ready tenant/quickstart --timeout=3m")
    print(kubectl("wait", "--for=condition=Ready", "tenant/quickstart", "--timeout=3m", timeout=200))

    step("kubectl get tenants,mcpconnections,promptpolicies -A")
    print(kubectl("get", "tenants,mcpconnections,promptpolicies", "-A"))
    step("kubectl get deploy,pods,svc,hpa,pdb,networkpolicy,configmap,secret -n tg-quickstart")
    print(kubectl("get", "deploy,pods,svc,hpa,pdb,networkpolicy,configmap,secret", "-n", "tg-quickstart"))

    step("kubectl -n tg-quickstart port-forward svc/gateway :8080")
    forward, url = port_forward("tg-quickstart", "svc/gateway", 8080)
    pids.write_text(f"{forward.pid}\n")
    print(f"port-forward pid {forward.pid} at {url}")

    step("a chat through the gateway with the openai SDK")
    token = mint_token(gateway_bin, EXAMPLES / "quickstart", EXAMPLES / "quickstart/dev-signing-key.pem",
                       "demo@quickstart.example")
    question = "Hello from make demo!"
    print(f"user: {question}")
    print(f"assistant: {app.chat(url, token, 'chat-default', question)}")

    print(f"""
Tenantgate is running on the local cluster. Try:

  export KUBECONFIG={os.environ['KUBECONFIG']}
  export PATH={os.environ['TENANTGATE_BIN']}:$PATH    # the pinned kubectl and helm
  kubectl get tenantgate -A
  kubectl get pods -A
  TOKEN=$(make -s token)
  curl -s {url}/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "chat-default", "messages": [{{"role": "user", "content": "Hi"}}]}}'

Logs: kubectl logs -n tg-quickstart deploy/gateway. Tear it all down with: make demo-down""")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StepFailed:
        # What the cluster says of itself, before e2e/demo stops it.
        print(e2e.diagnostics(), file=sys.stderr)
        raise
