// The real nodes' pod sandbox ("pause") program: built here, so the sandbox
// image needs no registry.
module tenantgate.dev/e2e/tools/pause

go 1.26.0
