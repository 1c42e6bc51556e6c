// Command coredns is CoreDNS (github.com/coredns/coredns) with only the plugins the test
// cluster's Corefile uses, registered in CoreDNS's own order (its plugin.cfg). Leaving out
// the cloud back-ends (route53, azure, clouddns, etcd...) keeps the cold build short.
//
// There is deliberately no `forward` plugin: cluster DNS answers for cluster.local and the
// reverse zones only and never sends a query off this machine.
package main

import (
	"log"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is the order in which plugins handle a query: CoreDNS's plugin.cfg order,
// restricted to the plugins linked above.
var directives = []string{
	"reload", "ready", "health", "prometheus", "errors", "log",
	"loadbalance", "cache", "kubernetes", "loop",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		log.Fatalf("coredns: %v", err)
	}
	coremain.Run()
}
