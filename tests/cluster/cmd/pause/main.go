// Command pause is the test node's Pod sandbox ("infra") process: it holds a Pod's
// namespaces open, reaps zombies re-parented to it (it is PID 1 of the Pod) and exits 0 on
// SIGINT or SIGTERM. It does what the kubelet's registry.k8s.io/pause image does; the image
// cannot be pulled here, so scripts/cluster.sh builds this into a FROM-scratch image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
