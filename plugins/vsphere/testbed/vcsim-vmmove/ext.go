package main

// The extension: how migration calls reach our code instead of the stock simulator's.
//
// Three routes, chosen so the stock dispatcher still does session checks, locking, fault encoding and logging:
//
//  1. Objects we own outright are put into simulator.Map under the reference the ServiceContent advertises
//     (the VirtualMachineProvisioningChecker) or under new references (our migration tasks). The stock
//     dispatcher finds their methods (CheckRelocate_Task, CancelTask, ...) by reflection, as for any object.
//
//  2. Methods of objects the stock simulator owns (VirtualMachine.RelocateVM_Task / MigrateVM_Task,
//     ServiceInstance.QueryVMotionCompatibility) cannot be added to its types, and wrapping its objects breaks
//     its own type assertions. So we register host-qualified patterns ("127.0.0.1/sdk", "localhost/sdk", ...)
//     on the http.ServeMux; Go's mux prefers them over the stock plain "/sdk". The handler peeks at the SOAP
//     body, decodes candidate calls with simulator.UnmarshalBody, and for ours rewrites the request's
//     <_this> value to "vmmove:<value>" and hands it to the stock Service.ServeSDK on a private path that is
//     bound to a private Registry holding proxy objects under those rewritten references. (A proxy under the
//     original reference would not work: the dispatcher prefers Session.Get, which falls back to the global
//     simulator.Map and would find the stock object again.) Everything else passes through untouched.
//
//  3. A bogus target reference is answered with a ManagedObjectNotFound fault before any type assertion.

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	privPath    = "/vmmove/sdk-ext" // private SDK path bound to ext.priv
	proxyPrefix = "vmmove:"
)

// config holds the behaviour knobs set by command-line flags.
type config struct {
	migrateDuration  time.Duration // wall time of the running phase of a migration
	queueDelay       time.Duration // time a migration task stays queued before running
	tick             time.Duration // progress update interval
	checkDelay       time.Duration // time a checker task takes (0: complete before the call returns)
	maxPerHost       int           // concurrent migrations per host (source or destination); 0 = unlimited
	syncFaults       bool          // validation faults as SOAP faults (true) or as task errors (false)
	runningFaults    bool          // validation faults as tasks that start (startTime set) and then fail
	hostMemoryMB     int64         // override every host's memory size (0 = model default)
	taskRetention    time.Duration // finished tasks leave recentTask (and their MoRef goes) after this; 0 = never
	compatExPoolless bool          // QueryVMotionCompatibilityEx checks a pool-less spec (flags other clusters' hosts)
}

// ext is the migration extension compiled into the simulator binary.
type ext struct {
	cfg  config
	svc  *simulator.Service
	priv *simulator.Registry

	mu      sync.Mutex
	active  map[types.ManagedObjectReference]*moveTask // VM -> its running or queued migration
	perHost map[types.ManagedObjectReference]int       // host -> migrations holding a slot
	inbound map[types.ManagedObjectReference]int64     // host -> MB reserved by accepted inbound live migrations
	tasks   map[types.ManagedObjectReference]*moveTask // every task we made that a restart has not dropped
	proxyMu sync.Mutex
	taskSeq int64

	sess     *sessions    // restart epochs: which session cookies and connections are still valid
	watch    *taskWatcher // VM recentTask and task retention
	ctlToken string       // required on /vmmove/ctl/ requests
}

func newExt(svc *simulator.Service, cfg config) *ext {
	priv := simulator.NewRegistry()
	priv.Path = privPath
	return &ext{
		cfg:     cfg,
		svc:     svc,
		priv:    priv,
		active:  make(map[types.ManagedObjectReference]*moveTask),
		perHost: make(map[types.ManagedObjectReference]int),
		inbound: make(map[types.ManagedObjectReference]int64),
		tasks:   make(map[types.ManagedObjectReference]*moveTask),
		sess:    newSessions(),
		watch:   newTaskWatcher(cfg.taskRetention),
	}
}

// install wires the extension into the service. Call after model.Create and before svc.NewServer.
// hostnames are the Host header names (without port) whose /sdk requests we intercept.
func (e *ext) install(hostnames []string) {
	if e.svc.ServeMux == nil {
		e.svc.ServeMux = http.NewServeMux()
	}
	e.svc.RegisterSDK(e.priv)
	simulator.Map.AddHandler(e.watch)
	e.svc.ServeMux.HandleFunc(ctlPrefix, e.serveCtl)

	content := simulator.Map.Get(types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}).(*simulator.ServiceInstance).Content
	if ref := content.VmProvisioningChecker; ref != nil {
		c := &provChecker{ext: e}
		c.Self = *ref
		simulator.Map.Put(c) // replaces the stock placeholder object (which answers MethodNotFound)
	}

	if e.cfg.hostMemoryMB > 0 {
		for _, obj := range simulator.Map.All("HostSystem") {
			h := obj.(*simulator.HostSystem)
			simulator.Map.WithLock(h, func() {
				size := e.cfg.hostMemoryMB << 20
				if h.Summary.Hardware != nil {
					h.Summary.Hardware.MemorySize = size
				}
				if h.Hardware != nil {
					h.Hardware.MemorySize = size
				}
			})
		}
	}

	seen := map[string]bool{}
	for _, name := range hostnames {
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		for _, p := range []string{"/sdk", "/sdk/vimService"} {
			e.svc.ServeMux.HandleFunc(name+p, e.serveSDK)
		}
	}
}

var candidateMethods = [][]byte{[]byte("RelocateVM_Task"), []byte("MigrateVM_Task"), []byte("QueryVMotionCompatibility"), []byte("PowerOnVM_Task")}

// serveSDK intercepts the SOAP calls we implement on stock-owned objects and passes the rest through. Every
// request first passes the restart variant (sessions.admit).
func (e *ext) serveSDK(w http.ResponseWriter, r *http.Request) {
	switch e.sess.admit(r) {
	case "down": // vCenter restarting: the reverse proxy answers for the absent service
		http.Error(w, "Service Unavailable", http.StatusServiceUnavailable)
		return
	case "drop": // a connection from before the restart
		hangUp(w)
		return
	}
	if r.Method != http.MethodPost {
		e.svc.ServeSDK(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	if out, m, ok := e.rewrite(body); ok {
		r2 := r.Clone(r.Context())
		r2.URL.Path = privPath
		r2.Body = io.NopCloser(bytes.NewReader(out))
		r2.ContentLength = int64(len(out))
		if m.This.Type == "VirtualMachine" && e.serveAnswerVariant(w, r2, m.This, out) {
			return
		}
		e.svc.ServeSDK(w, r2)
		return
	}
	e.svc.ServeSDK(w, r)
	e.sess.issued(w.Header()) // a Login answer carries the new session's cookie
}

// rewrite returns the body with <_this> pointing at our proxy, and the decoded call, if the call is one we serve.
func (e *ext) rewrite(body []byte) ([]byte, *simulator.Method, bool) {
	hit := false
	for _, c := range candidateMethods {
		if bytes.Contains(body, c) {
			hit = true
			break
		}
	}
	if !hit {
		return nil, nil, false
	}
	m, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		return nil, nil, false // let the stock handler produce its own decoding fault
	}
	switch {
	case (m.Name == "RelocateVM_Task" || m.Name == "MigrateVM_Task") && m.This.Type == "VirtualMachine":
	case m.Name == "QueryVMotionCompatibility" && m.This.Type == "ServiceInstance":
	case m.Name == "PowerOnVM_Task" && m.This.Type == "VirtualMachine" && hasExtra(m.This, keyPowerOn):
		// only a VM told to refuse its power-on; the rest power on as stock vcsim does
	default:
		return nil, nil, false
	}
	if simulator.Map.Get(m.This) == nil {
		return nil, nil, false // stock answers ManagedObjectNotFound for an unknown _this
	}
	e.ensureProxy(m.This)
	out, ok := rewriteThis(body, m.This.Value, proxyPrefix+m.This.Value)
	if !ok {
		log.Printf("vmmove: could not rewrite _this of %s; passing through", m.Name)
	}
	return out, m, ok
}

var thisRE = regexp.MustCompile(`(<(?:[A-Za-z0-9_.-]+:)?_this\b[^>]*>)\s*([^<]*?)\s*(</(?:[A-Za-z0-9_.-]+:)?_this\s*>)`)

// rewriteThis replaces the text of the first <_this> element, if it equals old.
func rewriteThis(body []byte, old, new string) ([]byte, bool) {
	loc := thisRE.FindSubmatchIndex(body)
	if loc == nil || string(body[loc[4]:loc[5]]) != old {
		return nil, false
	}
	out := make([]byte, 0, len(body)+len(proxyPrefix))
	out = append(out, body[:loc[4]]...)
	out = append(out, new...)
	out = append(out, body[loc[5]:]...)
	return out, true
}

// ensureProxy puts the proxy object for ref into the private registry, once.
func (e *ext) ensureProxy(ref types.ManagedObjectReference) {
	pref := types.ManagedObjectReference{Type: ref.Type, Value: proxyPrefix + ref.Value}
	e.proxyMu.Lock()
	defer e.proxyMu.Unlock()
	if e.priv.Get(pref) != nil {
		return
	}
	switch ref.Type {
	case "VirtualMachine":
		e.priv.Put(&vmProxy{Self: pref, vm: ref, ext: e})
	case "ServiceInstance":
		e.priv.Put(&siProxy{Self: pref, ext: e})
	}
}

// nextTaskRef returns a fresh Task reference ("task-vmmove-N").
func (e *ext) nextTaskRef() types.ManagedObjectReference {
	n := atomic.AddInt64(&e.taskSeq, 1)
	return types.ManagedObjectReference{Type: "Task", Value: fmt.Sprintf("task-vmmove-%d", n)}
}

// notFound is the SOAP fault for a reference that names no object of the expected type.
func notFound(ref types.ManagedObjectReference) *soapFaultErr {
	return &soapFaultErr{
		msg:   fmt.Sprintf("The object '%s:%s' has already been deleted or has not been completely created", ref.Type, ref.Value),
		fault: &types.ManagedObjectNotFound{Obj: ref},
	}
}

// soapFaultErr is a fault to be returned synchronously, as a SOAP fault of the call itself.
type soapFaultErr struct {
	msg   string
	fault types.BaseMethodFault
}

func (s *soapFaultErr) Error() string { return s.msg }

// dropTask forgets a task that was never put into the Map (a fault raised by the call itself).
func (e *ext) dropTask(t *moveTask) {
	e.mu.Lock()
	delete(e.tasks, t.Self)
	e.mu.Unlock()
}
