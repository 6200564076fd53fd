// Command etcd is the upstream etcd server entry point built from go.etcd.io/etcd/server/v3.
// The upstream binary lives in the repository's root module; its main is this one call.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
