package main

// Platform variants a real vCenter shows and the stock simulator does not, each behind a switch:
//
//   - a vCenter restart as a client sees it (control endpoint POST /vmmove/ctl/restart): every session is
//     dropped at once, TCP connections opened before it are closed on their next request, /sdk may answer
//     503 for a while, and every task MoRef is gone (ManagedObjectNotFound). The inventory is kept: a
//     migration in flight is lost with the restart (the VM stays on its source) or, with inflight=commit,
//     had reached the hosts' commit point and the VM is on its target - either way its task is gone.
//   - lost and late answers to RelocateVM_Task / MigrateVM_Task (per-VM directive vmmove.answer).
//   - tasks leaving recentTask after a while (-task-retention), per VM (ManagedEntity.recentTask) as well
//     as on the TaskManager, maintained by taskWatcher.
//
// How a session is dropped: the stock simulator maps the vmware_soap_session cookie to a session on every
// request. We remember which restart "epoch" issued each cookie (from the Set-Cookie of Login answers) and
// strip cookies of an older epoch before the stock handler sees the request. With no session the stock
// dispatcher answers NotAuthenticated for calls, and RetrievePropertiesEx/RetrieveProperties answer with a
// NotAuthenticated fault per property in each object's missingSet - the shape a real vCenter gives.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	ctlPrefix = "/vmmove/ctl/"
	keyAnswer = "vmmove.answer"
)

// sessions tracks which restart epoch issued each session cookie, and the TCP connections of each epoch.
type sessions struct {
	mu        sync.Mutex
	epoch     int
	cookies   map[string]int // cookie value -> epoch that issued it
	conns     map[string]int // client address (ip:port) -> epoch of its first request
	downUntil time.Time      // /sdk answers 503 until then
	restarts  int
}

func newSessions() *sessions {
	return &sessions{cookies: make(map[string]int), conns: make(map[string]int)}
}

// admit decides what happens to a request before the stock handler sees it: "down" (503), "drop" (close
// the connection without an answer: a TCP connection the restart killed), or "" (serve; a cookie of an
// older epoch has been removed from r).
func (s *sessions) admit(r *http.Request) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.downUntil) {
		return "down"
	}
	if e, seen := s.conns[r.RemoteAddr]; seen && e < s.epoch {
		delete(s.conns, r.RemoteAddr) // the client reconnects on a new port
		return "drop"
	}
	s.conns[r.RemoteAddr] = s.epoch
	if s.epoch == 0 {
		return ""
	}
	if c, err := r.Cookie(soap.SessionCookieName); err == nil {
		if e, ok := s.cookies[c.Value]; !ok || e < s.epoch {
			r.Header.Del("Cookie") // a session of a previous vCenter process: unknown now
		}
	}
	return ""
}

// issued records session cookies set by an answer (Login).
func (s *sessions) issued(h http.Header) {
	res := http.Response{Header: h}
	for _, c := range res.Cookies() {
		if c.Name == soap.SessionCookieName {
			s.mu.Lock()
			s.cookies[c.Value] = s.epoch
			s.mu.Unlock()
		}
	}
}

// hangUp closes the client's connection without an answer.
func hangUp(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // the server closes the connection for us
	}
	conn, _, err := hj.Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

// ---------------------------------------------------------------------------------------------------------------
// The control endpoint: POST https://<listen>/vmmove/ctl/<action>, header X-Vmmove-Ctl: <token from the info file>.

func (e *ext) serveCtl(w http.ResponseWriter, r *http.Request) {
	got := []byte(r.Header.Get("X-Vmmove-Ctl"))
	if e.ctlToken == "" || subtle.ConstantTimeCompare(got, []byte(e.ctlToken)) != 1 {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	action := strings.TrimPrefix(r.URL.Path, ctlPrefix)
	var out interface{}
	var err error
	switch action {
	case "restart":
		out, err = e.restart(r.URL.Query().Get("down"), r.URL.Query().Get("inflight"))
	default:
		err = fmt.Errorf("unknown action %q", action)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// restartReport is what POST /vmmove/ctl/restart answers.
type restartReport struct {
	Epoch     int      `json:"epoch"`
	Dropped   []string `json:"dropped_tasks"`   // task references that now answer ManagedObjectNotFound
	Lost      []string `json:"lost_migrations"` // in-flight migrations lost with the restart (VM on its source)
	Committed []string `json:"committed"`       // in-flight migrations that completed on the hosts (VM on target)
}

// restart simulates a vCenter restart: sessions and connections dropped, tasks forgotten, inventory kept.
// down: how long /sdk answers 503 afterwards ("" = 0). inflight: "lost" (default) or "commit".
func (e *ext) restart(down, inflight string) (*restartReport, error) {
	var downFor time.Duration
	if down != "" {
		d, err := time.ParseDuration(down)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("down=%q: not a duration", down)
		}
		downFor = d
	}
	commit := false
	switch inflight {
	case "", "lost":
	case "commit":
		commit = true
	default:
		return nil, fmt.Errorf("inflight=%q: want lost or commit", inflight)
	}

	rep := &restartReport{Dropped: []string{}, Lost: []string{}, Committed: []string{}}
	s := e.sess
	s.mu.Lock()
	s.epoch++
	s.restarts++
	rep.Epoch = s.epoch
	s.downUntil = time.Now().Add(downFor)
	s.mu.Unlock()

	// In-flight migrations: settle each exactly once (the run goroutine may be about to commit).
	e.mu.Lock()
	var flying []*moveTask
	for _, t := range e.active {
		flying = append(flying, t)
	}
	e.mu.Unlock()
	for _, t := range flying {
		if !t.settle() {
			continue // committed just now: the VM is on its target and the task ends below anyway
		}
		close(t.lost)
		if commit && t.plan != nil {
			if err := e.commit(t.plan); err != nil {
				log.Printf("vmmove: restart: committing %s: %v", t.Self.Value, err)
			}
			rep.Committed = append(rep.Committed, t.Self.Value)
		} else {
			rep.Lost = append(rep.Lost, t.Self.Value)
		}
		e.release(t)
	}

	// Every task MoRef is gone, ours and the stock simulator's.
	refs := map[types.ManagedObjectReference]bool{}
	e.mu.Lock()
	for ref := range e.tasks {
		refs[ref] = true
	}
	e.tasks = make(map[types.ManagedObjectReference]*moveTask)
	e.mu.Unlock()
	tm := taskManager()
	if tm != nil {
		tm.Lock()
		for _, ref := range tm.RecentTask {
			refs[ref] = true
		}
		simulator.Map.Update(tm, []types.PropertyChange{{Name: "recentTask", Val: []types.ManagedObjectReference{}}})
		tm.Unlock()
	}
	for ref := range refs {
		if simulator.Map.Get(ref) != nil {
			simulator.Map.Remove(ref)
			rep.Dropped = append(rep.Dropped, ref.Value)
		}
	}
	e.watch.clearAll()
	log.Printf("vmmove: simulated vCenter restart #%d (down %s, in flight: %d lost, %d committed, %d tasks dropped)",
		rep.Epoch, downFor, len(rep.Lost), len(rep.Committed), len(rep.Dropped))
	return rep, nil
}

func taskManager() *simulator.TaskManager {
	content := simulator.Map.Get(types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}).(*simulator.ServiceInstance).Content
	if content.TaskManager == nil {
		return nil
	}
	tm, _ := simulator.Map.Get(*content.TaskManager).(*simulator.TaskManager)
	return tm
}

// ---------------------------------------------------------------------------------------------------------------
// Lost and late answers: vmmove.answer = "drop" | "late:<duration>" on the VM (one shot).
//
//	drop        the migration is accepted (its task exists) but the connection closes before the answer
//	late:<d>    the connection closes at once; the server applies the request <d> later
//
// Consumed when the request arrives. Only RelocateVM_Task and MigrateVM_Task look at it.

// answerDirective reads and consumes vm's vmmove.answer directive ("" if none).
func answerDirective(vm types.ManagedObjectReference) (string, time.Duration, error) {
	obj, ok := simulator.Map.Get(vm).(*simulator.VirtualMachine)
	if !ok {
		return "", 0, nil
	}
	var spec string
	simulator.Map.WithLock(obj, func() {
		if s, ok := extraConfig(obj)[keyAnswer]; ok && strings.TrimSpace(s) != "" {
			spec = strings.TrimSpace(s)
			consumeExtraConfig(obj, keyAnswer)
		}
	})
	switch {
	case spec == "":
		return "", 0, nil
	case spec == "drop":
		return "drop", 0, nil
	case strings.HasPrefix(spec, "late:"):
		d, err := time.ParseDuration(strings.TrimPrefix(spec, "late:"))
		if err != nil || d < 0 {
			return "", 0, fmt.Errorf("%s=%q: bad duration", keyAnswer, spec)
		}
		return "late", d, nil
	}
	return "", 0, fmt.Errorf("%s=%q: want drop or late:<duration>", keyAnswer, spec)
}

// serveAnswerVariant handles a migration request (r already routed to our proxy, body its rewritten SOAP body)
// whose VM carries vmmove.answer; false if it carries none.
func (e *ext) serveAnswerVariant(w http.ResponseWriter, r *http.Request, vm types.ManagedObjectReference, body []byte) bool {
	kind, delay, err := answerDirective(vm)
	if err != nil {
		log.Printf("vmmove: %v (ignored)", err)
		return false
	}
	switch kind {
	case "drop":
		rec := httptest.NewRecorder()
		e.svc.ServeSDK(rec, r) // vCenter acts on it...
		log.Printf("vmmove: %s: answer to a migration request dropped (HTTP %d never sent)", vm.Value, rec.Code)
		hangUp(w) // ...and the answer never reaches the client
		return true
	case "late":
		late := r.Clone(context.Background())
		hangUp(w)
		log.Printf("vmmove: %s: connection closed; the migration request will be applied %s late", vm.Value, delay)
		go func() {
			time.Sleep(delay)
			if e.sess.admit(late) != "" {
				log.Printf("vmmove: %s: late migration request lost (vCenter restarted meanwhile)", vm.Value)
				return
			}
			late.Body = io.NopCloser(bytes.NewReader(body))
			late.ContentLength = int64(len(body))
			rec := httptest.NewRecorder()
			e.svc.ServeSDK(rec, late)
			log.Printf("vmmove: %s: late migration request applied (HTTP %d)", vm.Value, rec.Code)
		}()
		return true
	}
	return false
}

// ---------------------------------------------------------------------------------------------------------------
// recentTask per entity, and task retention.

// taskWatcher keeps ManagedEntity.recentTask of VMs (the stock simulator keeps only TaskManager.recentTask)
// and forgets finished tasks after -task-retention. Registry handlers may run while the caller holds an
// object's lock (a stock VM method creating its task), so the work is done in order on one goroutine.
type taskWatcher struct {
	retention time.Duration
	work      chan func()
	stopped   int32 // set by stop: no more work is queued
	mu        sync.Mutex
	ended     map[types.ManagedObjectReference]bool // finished tasks already scheduled for forgetting
	entities  map[types.ManagedObjectReference]types.ManagedObjectReference
}

func newTaskWatcher(retention time.Duration) *taskWatcher {
	w := &taskWatcher{
		retention: retention,
		work:      make(chan func(), 4096),
		ended:     make(map[types.ManagedObjectReference]bool),
		entities:  make(map[types.ManagedObjectReference]types.ManagedObjectReference),
	}
	go func() {
		for f := range w.work {
			f()
		}
	}()
	return w
}

func (w *taskWatcher) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmmoveTaskWatcher", Value: "vmmove-task-watcher"}
}

func taskInfoOf(obj mo.Reference) (*types.TaskInfo, bool) {
	switch t := obj.(type) {
	case *simulator.Task:
		return &t.Info, true
	case *moveTask:
		return &t.Info, true
	case *mo.Task:
		return &t.Info, true
	}
	return nil, false
}

// PutObject: a new task appears in its VM's recentTask.
func (w *taskWatcher) PutObject(obj mo.Reference) {
	ref := obj.Reference()
	if ref.Type != "Task" {
		return
	}
	info, ok := taskInfoOf(obj)
	if !ok || info.Entity == nil || info.Entity.Type != "VirtualMachine" {
		return
	}
	entity := *info.Entity
	w.mu.Lock()
	w.entities[ref] = entity
	w.mu.Unlock()
	w.enqueue(func() { editRecent(entity, ref, true) })
}

// enqueue queues work unless the watcher is stopped.
func (w *taskWatcher) enqueue(f func()) {
	if atomic.LoadInt32(&w.stopped) == 0 {
		w.work <- f
	}
}

// stop lets the queued work finish and takes no more (the process is exiting).
func (w *taskWatcher) stop() {
	if atomic.CompareAndSwapInt32(&w.stopped, 0, 1) {
		done := make(chan struct{})
		w.work <- func() { close(done) }
		<-done
	}
}

// UpdateObject: a task that ended is forgotten after the retention time.
func (w *taskWatcher) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	if w.retention <= 0 || obj.Reference().Type != "Task" {
		return
	}
	for _, c := range changes {
		if c.Name != "info.state" && c.Name != "info" {
			continue
		}
		info, ok := taskInfoOf(obj)
		if !ok || (info.State != types.TaskInfoStateSuccess && info.State != types.TaskInfoStateError) {
			return
		}
		ref := obj.Reference()
		w.mu.Lock()
		already := w.ended[ref]
		w.ended[ref] = true
		w.mu.Unlock()
		if !already {
			time.AfterFunc(w.retention, func() { w.enqueue(func() { w.forget(ref) }) })
		}
		return
	}
}

func (w *taskWatcher) RemoveObject(types.ManagedObjectReference) {}

// forget removes a finished task from TaskManager.recentTask and its VM's recentTask; its MoRef then answers
// ManagedObjectNotFound, as on a vCenter where the task aged out.
func (w *taskWatcher) forget(ref types.ManagedObjectReference) {
	w.mu.Lock()
	entity, ok := w.entities[ref]
	delete(w.entities, ref)
	delete(w.ended, ref)
	w.mu.Unlock()
	if ok {
		editRecent(entity, ref, false)
	}
	if tm := taskManager(); tm != nil {
		tm.Lock()
		var keep []types.ManagedObjectReference
		for _, r := range tm.RecentTask {
			if r != ref {
				keep = append(keep, r)
			}
		}
		simulator.Map.Update(tm, []types.PropertyChange{{Name: "recentTask", Val: keep}})
		tm.Unlock()
	}
	if simulator.Map.Get(ref) != nil {
		simulator.Map.Remove(ref)
	}
}

// clearAll empties every VM's recentTask (a restart); queued after any pending additions.
func (w *taskWatcher) clearAll() {
	w.mu.Lock()
	w.entities = make(map[types.ManagedObjectReference]types.ManagedObjectReference)
	w.ended = make(map[types.ManagedObjectReference]bool)
	w.mu.Unlock()
	done := make(chan struct{})
	w.work <- func() {
		for _, obj := range simulator.Map.All("VirtualMachine") {
			vm := obj.(*simulator.VirtualMachine)
			simulator.Map.WithLock(vm, func() {
				if len(vm.RecentTask) > 0 {
					simulator.Map.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: []types.ManagedObjectReference{}}})
				}
			})
		}
		close(done)
	}
	<-done
}

// flush waits until the work queued so far is done.
func (w *taskWatcher) flush() {
	done := make(chan struct{})
	w.work <- func() { close(done) }
	<-done
}

func editRecent(entity, task types.ManagedObjectReference, add bool) {
	vm, ok := simulator.Map.Get(entity).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		var list []types.ManagedObjectReference
		for _, r := range vm.RecentTask {
			if r != task {
				list = append(list, r)
			}
		}
		if add {
			list = append(list, task)
		}
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: list}})
	})
}
