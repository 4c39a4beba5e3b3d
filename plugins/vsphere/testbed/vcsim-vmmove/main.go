// Command vcsim-vmmove is govmomi's vCenter simulator (simulator.VPX model) with an extension that gives the
// migration calls realistic behaviour, for vmmove's vSphere backend tests. See ../README.md.
//
// It serves https://<listen>/sdk, writes the server's URL and CA certificate to files once it is accepting
// connections, and on SIGTERM/SIGINT (or stdin EOF with -exit-on-stdin-eof) removes its datastore
// directories (created under $TMPDIR) and exits.
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("vcsim-vmmove ")

	// Inventory (simulator.Model fields).
	dc := flag.Int("dc", 1, "datacenters")
	cluster := flag.Int("cluster", 2, "clusters per datacenter")
	clusterHost := flag.Int("host", 2, "hosts per cluster")
	standalone := flag.Int("standalone-host", 1, "standalone hosts per datacenter")
	vms := flag.Int("vm", 2, "VMs per resource pool (and per standalone host)")
	pool := flag.Int("pool", 0, "child resource pools per cluster (each cluster always has its root pool)")
	ds := flag.Int("ds", 2, "datastores per datacenter (each is a directory under $TMPDIR, mounted on every host)")
	pg := flag.Int("pg", 1, "distributed portgroups per datacenter")
	autostart := flag.Bool("autostart", true, "power on the model's VMs")
	hostMemMB := flag.Int64("host-memory-mb", 0, "override every host's memory size in MB (0: model default, 4095)")

	// Server.
	listen := flag.String("listen", "127.0.0.1:0", "listen address (port 0: any free port)")
	username := flag.String("username", "user", "the only username accepted by Login")
	password := flag.String("password", "pass", "the only password accepted by Login")
	useTLS := flag.Bool("tls", true, "serve HTTPS")
	tlsCert := flag.String("tls-cert", "", "PEM server certificate (chain) to use instead of a generated one")
	tlsKey := flag.String("tls-key", "", "PEM private key for -tls-cert")
	tlsNames := flag.String("tls-hostname", "", "extra comma-separated DNS names/IPs for the generated certificate "+
		"(always: 127.0.0.1, ::1, localhost); also intercepted by the extension")
	certFile := flag.String("cert-file", "", "write the CA certificate (PEM) clients should trust to this file")
	urlFile := flag.String("url-file", "", "write the SDK URL (https://host:port/sdk) to this file when ready")
	infoFile := flag.String("info-file", "", "write {url,host,port,cert_file,pid,username} as JSON to this file when ready")
	stdinEOF := flag.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF (the parent went away)")
	trace := flag.Bool("trace", false, "trace SOAP requests and responses to stderr")

	// Migration behaviour.
	var cfg config
	flag.DurationVar(&cfg.migrateDuration, "migrate-duration", 2*time.Second, "running time of a migration (progress 0->100)")
	flag.DurationVar(&cfg.queueDelay, "queue-delay", 100*time.Millisecond, "time a migration task stays queued")
	flag.DurationVar(&cfg.tick, "tick", 100*time.Millisecond, "progress update interval")
	flag.DurationVar(&cfg.checkDelay, "check-delay", 0, "running time of checker tasks (0: done before the call returns)")
	flag.IntVar(&cfg.maxPerHost, "max-per-host", 0, "concurrent migrations per host, source or target (0: unlimited); extra ones stay queued")
	faults := flag.String("validation-faults", "task", "how validation faults surface: 'task' (task ends in error before it starts), "+
		"'running' (task starts, then ends in error) or 'sync' (SOAP fault of the call)")
	flag.DurationVar(&cfg.taskRetention, "task-retention", 0, "finished tasks leave recentTask and their MoRef is gone after this (0: kept)")
	flag.BoolVar(&cfg.compatExPoolless, "compat-ex-poolless", false, "QueryVMotionCompatibilityEx_Task judges a spec without a pool: "+
		"it flags a host in another cluster that CheckRelocate_Task with that cluster's pool accepts")
	flag.Parse()

	switch *faults {
	case "task":
	case "running":
		cfg.runningFaults = true
	case "sync":
		cfg.syncFaults = true
	default:
		log.Fatalf("-validation-faults: want task, running or sync, got %q", *faults)
	}
	cfg.hostMemoryMB = *hostMemMB
	if cfg.tick <= 0 {
		cfg.tick = 100 * time.Millisecond
	}
	simulator.Trace = *trace

	model := simulator.VPX()
	model.Datacenter = *dc
	model.Cluster = *cluster
	model.ClusterHost = *clusterHost
	model.Host = *standalone
	model.Machine = *vms
	model.Pool = *pool
	model.Datastore = *ds
	model.Portgroup = *pg
	model.Autostart = *autostart
	if err := model.Create(); err != nil {
		log.Fatalf("creating model: %v", err)
	}
	var x *ext
	cleanup := func() {
		if x != nil {
			x.watch.stop() // no task is forgotten while the model is taken down
		}
		model.Remove()
	}

	svc := model.Service
	svc.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}

	names := []string{"127.0.0.1", "::1", "localhost"}
	if h, _, err := net.SplitHostPort(*listen); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
		names = append(names, h)
	}
	for _, n := range strings.Split(*tlsNames, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}

	var caPEM []byte
	if *useTLS {
		var cert tls.Certificate
		var err error
		if *tlsCert != "" {
			cert, err = tls.LoadX509KeyPair(*tlsCert, *tlsKey)
			if err == nil {
				caPEM, err = os.ReadFile(*tlsCert)
			}
		} else {
			cert, caPEM, err = generateCert(names)
		}
		if err != nil {
			cleanup()
			log.Fatalf("TLS certificate: %v", err)
		}
		svc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	x = newExt(svc, cfg)
	x.ctlToken = newToken()
	x.install(names)

	server := svc.NewServer()
	u := *server.URL
	u.User = nil
	port, _ := strconv.Atoi(u.Port())

	if *certFile != "" && caPEM != nil {
		if err := writeAtomic(*certFile, caPEM); err != nil {
			cleanup()
			log.Fatalf("writing %s: %v", *certFile, err)
		}
	}
	if *urlFile != "" {
		if err := writeAtomic(*urlFile, []byte(u.String()+"\n")); err != nil {
			cleanup()
			log.Fatalf("writing %s: %v", *urlFile, err)
		}
	}
	if *infoFile != "" {
		info := map[string]interface{}{
			"url": u.String(), "host": u.Hostname(), "port": port, "cert_file": *certFile,
			"pid": os.Getpid(), "username": *username, "tls": *useTLS, "ctl_token": x.ctlToken,
		}
		data, _ := json.MarshalIndent(info, "", "  ")
		if err := writeAtomic(*infoFile, append(data, '\n')); err != nil {
			cleanup()
			log.Fatalf("writing %s: %v", *infoFile, err)
		}
	}
	log.Printf("serving %s (pid %d; %s)", u.String(), os.Getpid(), summary())

	done := make(chan string, 2)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { done <- (<-sig).String() }()
	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
			done <- "stdin EOF"
		}()
	}
	why := <-done
	log.Printf("stopping (%s)", why)
	cleanup() // datastore directories; the listener dies with the process
	os.Exit(0)
}

// writeAtomic writes data to path via a temporary file and rename, so readers never see a partial file.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Close()
	} else {
		_ = tmp.Close()
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// summary counts the inventory for the startup log line.
func summary() string {
	var parts []string
	for _, kind := range []string{"Datacenter", "ClusterComputeResource", "HostSystem", "ResourcePool", "Datastore", "VirtualMachine"} {
		parts = append(parts, fmt.Sprintf("%s=%d", kind, len(simulator.Map.All(kind))))
	}
	return strings.Join(parts, " ")
}

// newToken is the secret a client of the control endpoint (/vmmove/ctl/) must send; it is only in the info file.
func newToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		log.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}
