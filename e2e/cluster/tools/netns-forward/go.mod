// netns-forward carries TCP between the host's network namespace and a real
// node's (see main.go). Standard library only.
module tenantgate.dev/e2e/tools/netns-forward

go 1.26.0
