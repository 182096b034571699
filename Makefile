# Tenantgate: `make test` runs every test; `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: test
TEST_STEPS := check-generated lint test-images test-unit fuzz-smoke test-gateway test-services test-cluster test-node e2e
test: ## Every test (what CI runs), each step timed
	scripts/steps $(TEST_STEPS)

QUICKSTART := manifests/examples/quickstart

.PHONY: run
run: ## The quickstart tenant's gateway on 127.0.0.1:8080 (mock model, no other service)
	$(CARGO) run -q -p tenantgate-gateway -- --manifests $(QUICKSTART) --listen 127.0.0.1:8080 --log-format text

.PHONY: token
token: ## Print a one-hour token for `make run`, signed with the quickstart's development key
	@$(CARGO) run -q -p tenantgate-gateway -- token --manifests $(QUICKSTART) --key $(QUICKSTART)/dev-signing-key.pem

.PHONY: test-gateway
test-gateway: ## Gateway end to end: the official openai, anthropic and MCP Python SDKs, the OpenAI Agents SDK, the Vercel AI SDK and OpenAI Node SDK, Claude Code and Codex CLI, raw HTTP (clients cached)
	gateway/tests/python/run

.PHONY: bench-gateway
bench-gateway: ## Gateway vs mock-llm direct (open loop, vegeta): added latency (chat; /v1/messages and /v1/responses beside it), saturation, streaming, RSS, ratios to a bare hyper forwarder, LiteLLM and Portkey alongside (BENCH_LITELLM=0, BENCH_PORTKEY=0 leave them out); ten times capacity under a 256 MiB limit (peak RSS, records lost, recovery); then with policies, Redis limits, PostgreSQL audit and a PostgreSQL stall; tracing off and on (OTLP to a real collector), A/B in the same run. BENCH_BASELINE_GATEWAY=<binary>: an A/B against that build in the same run
	e2e/with-services e2e/bench/gateway

.PHONY: chaos
chaos: ## Fault injection (upstream, Redis, PostgreSQL, API server, operator leader, MCP upstream): a results table
	e2e/with-cluster e2e/with-services e2e/chaos/run

.PHONY: soak
soak: ## SOAK_MINUTES (10) of mixed open-loop load on 3 tenants with the operator: errors, p50/p99, RSS and fds over time
	e2e/with-cluster e2e/with-services e2e/soak/run

.PHONY: bench-mcp
bench-mcp: ## tools/call through /mcp vs. the rmcp echo server direct (concurrency 8, fixed rate), session-based (2025-11-25) and stateless (2026-07-28) clients side by side: added p50/p99, session and discovery setup; beside it a bare forwarder (the floor: gateway/floor ratio) and ToolHive's vmcp (BENCH_TOOLHIVE=0: off)
	e2e/bench/mcp

.PHONY: images
images: ## Container images as OCI archives (no engine, no registry): operator, gateway and the e2e test images; prints NAME REF ARCHIVE BYTES
	scripts/images

.PHONY: test-images
test-images: images ## Each image run by runc as UID 65532 on a read-only root in a network namespace; the Dockerfile's layout (operator, gateway) checked against them
	e2e/images/dockerfile-layout
	e2e/images/smoke

.PHONY: test-unit
test-unit: ## Unit, golden and schema tests of every crate (no services needed)
	$(CARGO) test --workspace --exclude tenantgate-tests --no-fail-fast

.PHONY: test-services
test-services: ## Gateway tests against real PostgreSQL and Redis (started and stopped around them)
	e2e/with-services $(CARGO) test -p tenantgate-gateway --test 'services_*'

.PHONY: test-cluster
test-cluster: ## Tests against a real local control plane (started and stopped around them)
	$(CARGO) build -p tenantgate-operator
	e2e/with-cluster $(CARGO) test -p tenantgate-tests -- --test-threads=4

.PHONY: test-node
test-node: ## A real node (containerd, kubelet, kube-proxy, CNI, kube-router, CoreDNS, metrics-server) proven by e2e/cluster/smoke
	TENANTGATE_REAL_NODES=1 e2e/with-cluster e2e/cluster/smoke

.PHONY: e2e
e2e: images ## The platform on a real node: helm/manifests install, tenants via kubectl, gateways as pods used with the openai and mcp SDKs, NetworkPolicies enforced, rollouts, GitOps changes, README commands
	rm -f $(TARGET_DIR)/e2e-summary.txt
	$(CARGO) build -p tenantgate-operator
	TENANTGATE_OPERATOR_BIN=$(TARGET_DIR)/debug/tenantgate-operator \
	TENANTGATE_REAL_NODES=1 TENANTGATE_E2E_SUMMARY=$(abspath $(TARGET_DIR))/e2e-summary.txt \
	  e2e/with-services e2e/with-cluster e2e/platform -x -rA --durations=0 $(CURDIR)/e2e/python
	@cat $(TARGET_DIR)/e2e-summary.txt

.PHONY: demo
demo: ## The platform flow to watch: local control plane, helm install, the quickstart tenant, a chat through its gateway; left running
	e2e/demo up

.PHONY: demo-down
demo-down: ## Stop what make demo started
	e2e/demo down

.PHONY: fuzz-smoke
fuzz-smoke: ## Replay every fuzz corpus, then fuzz each target FUZZ_SECONDS (20) (fuzz/README.md)
	scripts/fuzz smoke

.PHONY: fuzz
fuzz: ## Fuzz each target FUZZ_SECONDS (300), or only FUZZ_TARGET
	scripts/fuzz run $(FUZZ_TARGET)

.PHONY: generate
generate: ## Regenerate CRD YAML and the CRD reference
	scripts/generate

.PHONY: check-generated
check-generated: ## Fail when a committed generated file is stale
	scripts/check-generated

.PHONY: lint
lint: ## clippy with warnings as errors, and cargo deny check licenses bans sources
	scripts/lint

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: cluster-build
cluster-build: ## Build the pinned control-plane binaries into the cache
	e2e/cluster/build

.PHONY: cluster-up
cluster-up: ## Start etcd, kube-apiserver, controller-manager, scheduler and kwok on 127.0.0.1
	e2e/cluster/up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane and remove its data
	e2e/cluster/down

.PHONY: services-up
services-up: ## Start PostgreSQL and Redis on 127.0.0.1
	e2e/services/up

.PHONY: services-down
services-down: ## Stop PostgreSQL and Redis and remove their data
	e2e/services/down

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: bench-operator
bench-operator: ## Benchmark: TENANTGATE_BENCH_TENANTS (500) tenants applied at once on kwok nodes
	$(CARGO) build --release -p tenantgate-operator
	$(CARGO) build --release -p tenantgate-tests --bin bench-operator
	TENANTGATE_OPERATOR_BIN=$(TARGET_DIR)/release/tenantgate-operator TENANTGATE_NODES=$${TENANTGATE_NODES:-5} \
	TENANTGATE_API_QPS=$${TENANTGATE_API_QPS:-300} TENANTGATE_API_BURST=$${TENANTGATE_API_BURST:-600} \
	  e2e/with-cluster $(TARGET_DIR)/release/bench-operator
