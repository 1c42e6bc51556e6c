// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain) at the
// version k8s.io/kubernetes itself requires, built for lorafleet's test control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
