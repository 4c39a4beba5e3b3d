package main

// Migration semantics: validation, the asynchronous task, cancellation and the commit that moves the VM.

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// ---------------------------------------------------------------------------------------------------------------
// Proxies for stock-owned objects (see ext.go for how calls reach them).

// vmProxy receives RelocateVM_Task / MigrateVM_Task addressed to one VirtualMachine.
type vmProxy struct {
	Self types.ManagedObjectReference
	vm   types.ManagedObjectReference
	ext  *ext
}

func (p *vmProxy) Reference() types.ManagedObjectReference { return p.Self }

// RelocateVMTask implements VirtualMachine.RelocateVM_Task (compute, storage, or both; live or cold).
func (p *vmProxy) RelocateVMTask(ctx *simulator.Context, req *types.RelocateVM_Task) soap.HasFault {
	r := request{
		vm: p.vm, host: req.Spec.Host, pool: req.Spec.Pool, ds: req.Spec.Datastore,
		method: "RelocateVM_Task", descID: "VirtualMachine.relocate", prop: "spec.",
	}
	body := new(methods.RelocateVM_TaskBody)
	if ref, f := p.ext.migrate(ctx, r); f != nil {
		body.Fault_ = simulator.Fault(f.msg, f.fault)
	} else {
		body.Res = &types.RelocateVM_TaskResponse{Returnval: ref}
	}
	return body
}

// MigrateVMTask implements the deprecated VirtualMachine.MigrateVM_Task (compute only; optional state guard).
func (p *vmProxy) MigrateVMTask(ctx *simulator.Context, req *types.MigrateVM_Task) soap.HasFault {
	r := request{
		vm: p.vm, host: req.Host, pool: req.Pool, state: req.State,
		method: "MigrateVM_Task", descID: "VirtualMachine.migrate",
	}
	body := new(methods.MigrateVM_TaskBody)
	if ref, f := p.ext.migrate(ctx, r); f != nil {
		body.Fault_ = simulator.Fault(f.msg, f.fault)
	} else {
		body.Res = &types.MigrateVM_TaskResponse{Returnval: ref}
	}
	return body
}

// PowerOnVMTask serves VirtualMachine.PowerOnVM_Task for a VM carrying a vmmove.powerOn directive (rewrite
// routes only those here): the task fails with the directive's fault, and the VM stays powered off.
func (p *vmProxy) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	spec, name := "", p.vm.Value
	if vm, ok := simulator.Map.Get(p.vm).(*simulator.VirtualMachine); ok {
		simulator.Map.WithLock(vm, func() {
			spec, name = extraConfig(vm)[keyPowerOn], vm.Name
			consumeExtraConfig(vm, keyPowerOn)
		})
	}
	user := "vcsim"
	if ctx != nil && ctx.Session != nil {
		user = ctx.Session.UserName
	}
	t := p.ext.newTask(p.vm, name, "PowerOnVM_Task", "VirtualMachine.powerOn", user, false)
	simulator.Map.Put(t)
	t.fail(parseFaultSpec(keyPowerOn, strings.TrimPrefix(strings.TrimSpace(spec), "fail:")))
	return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: t.Self}}
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshots: consistent copies of the fields we need, each taken under that one object's lock.

type vmSnap struct {
	ref      types.ManagedObjectReference
	name     string
	host     types.ManagedObjectReference
	pool     types.ManagedObjectReference
	ds       []types.ManagedObjectReference
	power    types.VirtualMachinePowerState
	memMB    int64
	template bool
	ec       map[string]string
}

func snapVM(ref types.ManagedObjectReference) (vmSnap, bool) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok || ref.Type != "VirtualMachine" {
		return vmSnap{}, false
	}
	s := vmSnap{ref: ref}
	simulator.Map.WithLock(vm, func() {
		s.name = vm.Name
		if vm.Runtime.Host != nil {
			s.host = *vm.Runtime.Host
		}
		if vm.ResourcePool != nil {
			s.pool = *vm.ResourcePool
		}
		s.ds = append(s.ds, vm.Datastore...)
		s.power = vm.Runtime.PowerState
		if vm.Config != nil {
			s.memMB = int64(vm.Config.Hardware.MemoryMB)
			s.template = vm.Config.Template
		}
		s.ec = extraConfig(vm)
	})
	return s, true
}

type hostSnap struct {
	ref    types.ManagedObjectReference
	name   string
	parent types.ManagedObjectReference
	maint  bool
	conn   types.HostSystemConnectionState
	memMB  int64
	vms    []types.ManagedObjectReference
	ds     []types.ManagedObjectReference
}

func snapHost(ref types.ManagedObjectReference) (hostSnap, bool) {
	h, ok := simulator.Map.Get(ref).(*simulator.HostSystem)
	if !ok || ref.Type != "HostSystem" {
		return hostSnap{}, false
	}
	s := hostSnap{ref: ref}
	simulator.Map.WithLock(h, func() {
		s.name = h.Name
		if h.Parent != nil {
			s.parent = *h.Parent
		}
		s.maint = h.Runtime.InMaintenanceMode
		s.conn = h.Runtime.ConnectionState
		if h.Summary.Hardware != nil {
			s.memMB = h.Summary.Hardware.MemorySize >> 20
		}
		s.vms = append(s.vms, h.Vm...)
		s.ds = append(s.ds, h.Datastore...)
	})
	return s, true
}

func poolOwner(ref types.ManagedObjectReference) (types.ManagedObjectReference, bool) {
	p, ok := simulator.Map.Get(ref).(*simulator.ResourcePool)
	if !ok || ref.Type != "ResourcePool" {
		return types.ManagedObjectReference{}, false
	}
	var owner types.ManagedObjectReference
	simulator.Map.WithLock(p, func() { owner = p.Owner })
	return owner, true
}

func dsName(ref types.ManagedObjectReference) (string, bool) {
	d, ok := simulator.Map.Get(ref).(*simulator.Datastore)
	if !ok || ref.Type != "Datastore" {
		return "", false
	}
	var name string
	simulator.Map.WithLock(d, func() { name = d.Name })
	return name, true
}

// poweredOnMemMB sums the memory of powered-on VMs among refs, excluding skip.
func poweredOnMemMB(refs []types.ManagedObjectReference, skip types.ManagedObjectReference) int64 {
	var sum int64
	for _, ref := range refs {
		if ref == skip {
			continue
		}
		if s, ok := snapVM(ref); ok && s.power == types.VirtualMachinePowerStatePoweredOn {
			sum += s.memMB
		}
	}
	return sum
}

// ---------------------------------------------------------------------------------------------------------------
// Validation.

// request is a migration or check request, normalised across RelocateVM/MigrateVM/the checker calls.
type request struct {
	vm       types.ManagedObjectReference
	host     *types.ManagedObjectReference
	pool     *types.ManagedObjectReference
	ds       *types.ManagedObjectReference
	state    types.VirtualMachinePowerState // MigrateVM_Task/CheckMigrate_Task guard; "" = any
	method   string
	descID   string
	prop     string // property path prefix for InvalidArgument ("spec." for RelocateSpec)
	hostOnly bool   // QueryVMotionCompatibilityEx: host compatibility only, no pool/memory/task checks
	poolless bool   // with hostOnly: also judge the host against the VM's current pool (-compat-ex-poolless)
	check    bool   // a checker call: include vmmove.checkError / vmmove.checkWarning
}

// plan is a resolved request plus the faults it would raise, in precedence order.
type plan struct {
	vm               vmSnap
	srcHost, dstHost types.ManagedObjectReference
	srcPool, dstPool types.ManagedObjectReference
	dstDS            *types.ManagedObjectReference // nil: no storage move
	dstDSName        string
	live             bool  // powered on: live migration (memory admission applies)
	dstUsedMB        int64 // memory of powered-on VMs already on the target host
	dstCapMB         int64
	errs             []types.LocalizedMethodFault
	warns            []types.LocalizedMethodFault
}

// resolve looks up every referenced object and evaluates the validation rules.
// Unknown references are returned as a synchronous ManagedObjectNotFound fault; everything else lands in plan.errs.
func (e *ext) resolve(r request) (*plan, *soapFaultErr) {
	vm, ok := snapVM(r.vm)
	if !ok {
		return nil, notFound(r.vm)
	}
	p := &plan{vm: vm, srcHost: vm.host, srcPool: vm.pool, dstHost: vm.host, dstPool: vm.pool}
	p.live = vm.power == types.VirtualMachinePowerStatePoweredOn
	addErr := func(f types.BaseMethodFault, msg string) { p.errs = append(p.errs, lmf(f, msg)) }

	var dst hostSnap
	if r.host != nil {
		if dst, ok = snapHost(*r.host); !ok {
			return nil, notFound(*r.host)
		}
	}
	var owner types.ManagedObjectReference
	if r.pool != nil {
		if owner, ok = poolOwner(*r.pool); !ok {
			return nil, notFound(*r.pool)
		}
		p.dstPool = *r.pool
	}
	if r.ds != nil {
		if p.dstDSName, ok = dsName(*r.ds); !ok {
			return nil, notFound(*r.ds)
		}
		if len(vm.ds) != 1 || vm.ds[0] != *r.ds {
			p.dstDS = r.ds
		}
	}

	if vm.template {
		addErr(new(types.NotSupported), "The operation is not supported on a template.")
	}
	if r.state != "" && r.state != vm.power {
		addErr(&types.InvalidPowerState{RequestedState: r.state, ExistingState: vm.power},
			fmt.Sprintf("The attempted operation cannot be performed in the current state (%s).", vm.power))
	}

	switch {
	case r.hostOnly:
		p.dstHost = dst.ref
		// The pool-less spec a vCenter builds for QueryVMotionCompatibilityEx keeps the VM's pool, so a host in
		// another cluster fails the same rule RelocateVM_Task applies to a spec without the target's pool.
		if owner, _ = poolOwner(vm.pool); r.poolless && r.host != nil && dst.parent != owner {
			addErr(&types.InvalidArgument{InvalidProperty: "spec.pool"}, "A specified parameter was not correct: spec.pool")
		}
	case r.host != nil:
		p.dstHost = *r.host
		if r.pool == nil {
			owner, _ = poolOwner(vm.pool) // unset pool: the VM keeps its current pool
		}
		if dst.parent != owner {
			addErr(&types.InvalidArgument{InvalidProperty: r.prop + "pool"},
				"The target host and target pool are not associated with the same compute resource.")
		}
	case r.pool != nil:
		// Host unset: keep the current host if it belongs to the pool's compute resource, otherwise pick the
		// least loaded eligible host there (what DRS or a standalone compute resource does).
		if cur, ok := snapHost(vm.host); ok && cur.parent == owner {
			p.dstHost = cur.ref
		} else if h, ok := pickHost(owner); ok {
			p.dstHost = h
		} else {
			addErr(&types.InvalidArgument{InvalidProperty: r.prop + "host"},
				"No eligible host in the compute resource of the target pool.")
		}
	}
	if dst.ref.Value == "" {
		dst, _ = snapHost(p.dstHost)
	}

	if !r.hostOnly {
		if cur := e.activeTask(vm.ref); cur != nil {
			addErr(&types.TaskInProgress{Task: *cur}, "Another task is already in progress.")
		}
	}
	if dst.ref.Value != "" {
		if dst.maint {
			addErr(&types.InvalidHostState{Host: &dst.ref},
				"The operation is not allowed in the current state of the host ("+dst.name+" is in maintenance mode).")
		} else if dst.conn != "" && dst.conn != types.HostSystemConnectionStateConnected {
			addErr(&types.InvalidHostState{Host: &dst.ref},
				"The operation is not allowed in the current connection state of the host ("+string(dst.conn)+").")
		}
		want := vm.ds
		if p.dstDS != nil {
			want = []types.ManagedObjectReference{*p.dstDS}
		}
		for _, ds := range want {
			if simulator.FindReference(dst.ds, ds) == nil {
				name, _ := dsName(ds)
				addErr(&types.InvalidDatastore{Datastore: &ds, Name: name},
					fmt.Sprintf("Datastore '%s' is not accessible from host %s.", name, dst.name))
			}
		}
		if !r.hostOnly && p.live && dst.ref != vm.host {
			p.dstUsedMB, p.dstCapMB = poweredOnMemMB(dst.vms, vm.ref), dst.memMB
			if f := e.memoryFault(p); f != nil {
				addErr(f, fmt.Sprintf("Insufficient memory on host %s: %d MB requested, %d MB unreserved.",
					dst.name, vm.memMB, f.Unreserved>>20))
			}
		}
	}

	if r.check {
		if s := vm.ec[keyCheckError]; s != "" {
			p.errs = append(p.errs, parseFaultSpec(keyCheckError, s))
		}
		if s := vm.ec[keyCheckWarning]; s != "" {
			p.warns = append(p.warns, parseFaultSpec(keyCheckWarning, s))
		}
	}
	return p, nil
}

// memoryFault is the admission check for a live migration: memory of powered-on VMs on the target plus memory
// reserved by accepted inbound migrations plus this VM must fit in the host's memory.
func (e *ext) memoryFault(p *plan) *types.InsufficientMemoryResourcesFault {
	if !p.live || p.dstCapMB <= 0 || p.dstHost == p.srcHost {
		return nil
	}
	e.mu.Lock()
	used := p.dstUsedMB + e.inbound[p.dstHost]
	e.mu.Unlock()
	if used+p.vm.memMB <= p.dstCapMB {
		return nil
	}
	free := p.dstCapMB - used
	if free < 0 {
		free = 0
	}
	return &types.InsufficientMemoryResourcesFault{Unreserved: free << 20, Requested: p.vm.memMB << 20}
}

// pickHost returns the connected, non-maintenance host of a compute resource with the fewest VMs.
func pickHost(owner types.ManagedObjectReference) (types.ManagedObjectReference, bool) {
	var cands []hostSnap
	for _, obj := range simulator.Map.All("HostSystem") {
		if s, ok := snapHost(obj.Reference()); ok && s.parent == owner && !s.maint &&
			(s.conn == "" || s.conn == types.HostSystemConnectionStateConnected) {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return types.ManagedObjectReference{}, false
	}
	sort.Slice(cands, func(i, j int) bool {
		if len(cands[i].vms) != len(cands[j].vms) {
			return len(cands[i].vms) < len(cands[j].vms)
		}
		return cands[i].name < cands[j].name
	})
	return cands[0].ref, true
}

func (e *ext) activeTask(vm types.ManagedObjectReference) *types.ManagedObjectReference {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t := e.active[vm]; t != nil {
		ref := t.Self
		return &ref
	}
	return nil
}

// ---------------------------------------------------------------------------------------------------------------
// The migration task.

// moveTask is a Task we own: the stock dispatcher finds CancelTask on it by reflection, and the property
// collector reads info through the embedded mo.Task (it must stay the first field).
type moveTask struct {
	mo.Task

	cancel   chan struct{}
	lost     chan struct{} // closed when a simulated vCenter restart drops the task
	fate     sync.Mutex    // guards settled
	settled  bool          // committed, or dropped by a restart: whichever comes first, exactly once
	plan     *plan
	vm       types.ManagedObjectReference
	slots    []types.ManagedObjectReference // hosts whose concurrency slot this task holds
	reserve  types.ManagedObjectReference   // host whose inbound memory this task reserved
	reserved int64
}

func (e *ext) newTask(entity types.ManagedObjectReference, entityName, name, descID, user string, cancelable bool) *moveTask {
	t := &moveTask{cancel: make(chan struct{}), lost: make(chan struct{}), vm: entity}
	t.Self = e.nextTaskRef()
	e.mu.Lock()
	e.tasks[t.Self] = t
	e.mu.Unlock()
	t.Info = types.TaskInfo{
		Key:           t.Self.Value,
		Task:          t.Self,
		Name:          name,
		DescriptionId: descID,
		Entity:        &entity,
		EntityName:    entityName,
		State:         types.TaskInfoStateQueued,
		Cancelable:    cancelable,
		Reason:        &types.TaskReasonUser{UserName: user},
		QueueTime:     time.Now(),
	}
	return t
}

// CancelTask implements Task.CancelTask. The dispatcher holds this task's lock while it runs.
func (t *moveTask) CancelTask(ctx *simulator.Context, req *types.CancelTask) soap.HasFault {
	body := new(methods.CancelTaskBody)
	switch {
	case t.Info.State == types.TaskInfoStateSuccess || t.Info.State == types.TaskInfoStateError:
		body.Fault_ = simulator.Fault("The task has already completed.", &types.InvalidState{})
	case !t.Info.Cancelable:
		body.Fault_ = simulator.Fault("The task is not cancelable.", &types.NotSupported{})
	default:
		simulator.Map.Update(t, []types.PropertyChange{{Name: "info.cancelled", Val: true}})
		select {
		case <-t.cancel:
		default:
			close(t.cancel)
		}
		body.Res = new(types.CancelTaskResponse)
	}
	return body
}

func (t *moveTask) update(changes ...types.PropertyChange) {
	simulator.Map.WithLock(t, func() { simulator.Map.Update(t, changes) })
}

func (t *moveTask) setRunning() {
	t.update(
		types.PropertyChange{Name: "info.state", Val: types.TaskInfoStateRunning},
		types.PropertyChange{Name: "info.startTime", Val: time.Now()},
	)
}

func (t *moveTask) setProgress(pct int32) {
	t.update(types.PropertyChange{Name: "info.progress", Val: pct})
}

func (t *moveTask) succeed(result types.AnyType) {
	changes := []types.PropertyChange{
		{Name: "info.state", Val: types.TaskInfoStateSuccess},
		{Name: "info.cancelable", Val: false},
		{Name: "info.completeTime", Val: time.Now()},
	}
	if t.Info.StartTime == nil {
		changes = append(changes, types.PropertyChange{Name: "info.startTime", Val: time.Now()})
	}
	if result != nil {
		changes = append(changes, types.PropertyChange{Name: "info.result", Val: result})
	}
	if t.Info.Name == "RelocateVM_Task" || t.Info.Name == "MigrateVM_Task" {
		changes = append(changes, types.PropertyChange{Name: "info.progress", Val: int32(100)})
	}
	t.update(changes...)
}

func (t *moveTask) fail(f types.LocalizedMethodFault) {
	t.update(
		types.PropertyChange{Name: "info.state", Val: types.TaskInfoStateError},
		types.PropertyChange{Name: "info.cancelable", Val: false},
		types.PropertyChange{Name: "info.error", Val: f},
		types.PropertyChange{Name: "info.completeTime", Val: time.Now()},
	)
}

// settle claims the task's one outcome on the hosts (commit, or being dropped by a restart); false if the
// other one was claimed first.
func (t *moveTask) settle() bool {
	t.fate.Lock()
	defer t.fate.Unlock()
	if t.settled {
		return false
	}
	t.settled = true
	return true
}

func (t *moveTask) isLost() bool {
	select {
	case <-t.lost:
		return true
	default:
		return false
	}
}

func (t *moveTask) cancelled() bool {
	select {
	case <-t.cancel:
		return true
	default:
		return false
	}
}

// sleep waits d or until cancelled or lost; it reports whether the task was cancelled or lost.
func (t *moveTask) sleep(d time.Duration) bool {
	if d <= 0 {
		return t.cancelled() || t.isLost()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-t.cancel:
		return true
	case <-t.lost:
		return true
	case <-timer.C:
		return false
	}
}

var canceledFault = lmf(&types.RequestCanceled{}, "The task was canceled by a user.")

// migrate validates a request and starts its task. A non-nil *soapFaultErr is returned as the call's SOAP fault.
func (e *ext) migrate(ctx *simulator.Context, r request) (types.ManagedObjectReference, *soapFaultErr) {
	var none types.ManagedObjectReference
	p, sf := e.resolve(r)
	if sf != nil {
		return none, sf
	}
	user := "vcsim"
	if ctx != nil && ctx.Session != nil {
		user = ctx.Session.UserName
	}
	t := e.newTask(p.vm.ref, p.vm.name, r.method, r.descID, user, true)

	fault := func(f types.LocalizedMethodFault) (types.ManagedObjectReference, *soapFaultErr) {
		if e.cfg.syncFaults {
			e.dropTask(t)
			return none, &soapFaultErr{msg: f.LocalizedMessage, fault: f.Fault}
		}
		simulator.Map.Put(t)
		if e.cfg.runningFaults { // the other shape: the task starts, then fails
			go func() {
				if t.sleep(e.cfg.queueDelay) {
					return
				}
				t.setRunning()
				if t.sleep(e.cfg.tick) {
					return
				}
				t.fail(f)
			}()
			return t.Self, nil
		}
		t.fail(f)
		return t.Self, nil
	}
	if len(p.errs) > 0 {
		return fault(p.errs[0])
	}
	if f := e.begin(t, p); f != nil {
		return fault(*f)
	}

	// Accepted: read and consume this VM's one-shot directive, read its duration override.
	var inj *injection
	var injErr, durErr error
	dur := e.cfg.migrateDuration
	if vm, ok := simulator.Map.Get(p.vm.ref).(*simulator.VirtualMachine); ok {
		simulator.Map.WithLock(vm, func() {
			ec := extraConfig(vm)
			if s, ok := ec[keyInject]; ok {
				consumeExtraConfig(vm, keyInject)
				inj, injErr = parseInjection(s)
			}
			dur, durErr = durationOverride(ec, dur)
		})
	}
	t.plan = p
	simulator.Map.Put(t)
	if err := firstErr(injErr, durErr); err != nil {
		e.release(t)
		t.fail(lmf(&types.InvalidArgument{InvalidProperty: "config.extraConfig"}, err.Error()))
		return t.Self, nil
	}
	go e.run(t, p, inj, dur)
	return t.Self, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// begin registers t as the VM's active migration and reserves target memory, atomically with the
// TaskInProgress and memory checks so concurrent calls cannot both pass.
func (e *ext) begin(t *moveTask, p *plan) *types.LocalizedMethodFault {
	if f := e.memoryFault(p); f != nil { // cheap pre-check without holding e.mu across snapshots
		x := lmf(f, "Insufficient memory on the target host.")
		return &x
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur := e.active[p.vm.ref]; cur != nil {
		x := lmf(&types.TaskInProgress{Task: cur.Self}, "Another task is already in progress.")
		return &x
	}
	if p.live && p.dstHost != p.srcHost && p.dstCapMB > 0 {
		if p.dstUsedMB+e.inbound[p.dstHost]+p.vm.memMB > p.dstCapMB {
			x := lmf(&types.InsufficientMemoryResourcesFault{Requested: p.vm.memMB << 20}, "Insufficient memory on the target host.")
			return &x
		}
		e.inbound[p.dstHost] += p.vm.memMB
		t.reserve, t.reserved = p.dstHost, p.vm.memMB
	}
	e.active[p.vm.ref] = t
	return nil
}

// release undoes begin and frees any concurrency slots.
func (e *ext) release(t *moveTask) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.active[t.vm] == t {
		delete(e.active, t.vm)
	}
	if t.reserved > 0 {
		e.inbound[t.reserve] -= t.reserved
		t.reserved = 0
	}
	for _, h := range t.slots {
		e.perHost[h]--
	}
	t.slots = nil
}

// acquire takes a concurrency slot on the source and target hosts, if -max-per-host allows.
func (e *ext) acquire(t *moveTask, p *plan) bool {
	hosts := []types.ManagedObjectReference{p.srcHost}
	if p.dstHost != p.srcHost {
		hosts = append(hosts, p.dstHost)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg.maxPerHost > 0 {
		for _, h := range hosts {
			if e.perHost[h] >= e.cfg.maxPerHost {
				return false
			}
		}
	}
	for _, h := range hosts {
		e.perHost[h]++
	}
	t.slots = hosts
	return true
}

// run drives a migration task: queued -> running with rising progress -> commit -> success,
// or -> error on cancel (RequestCanceled) or injected failure. The VM only moves at commit.
func (e *ext) run(t *moveTask, p *plan, inj *injection, dur time.Duration) {
	defer func() {
		if r := recover(); r != nil { // never take the simulator down with us
			log.Printf("vmmove: migration %s panicked: %v", t.Self.Value, r)
			e.release(t)
			t.fail(lmf(&types.SystemError{Reason: fmt.Sprint(r)}, "Internal simulator error."))
		}
	}()
	canceled := func() {
		if t.isLost() {
			return // dropped by a restart: the task is gone, nobody reads it
		}
		e.release(t)
		t.fail(canceledFault)
	}

	if t.sleep(e.cfg.queueDelay) {
		canceled()
		return
	}
	if inj != nil && inj.refuse { // refused before it starts: no startTime, never running
		e.release(t)
		t.fail(lmf(e.fillFault(inj.fault, p), inj.message))
		return
	}
	for !e.acquire(t, p) { // stays queued while the hosts are at their concurrency limit
		if t.sleep(e.cfg.tick) {
			canceled()
			return
		}
	}
	t.setRunning()

	start := time.Now()
	last := int32(-1)
	for {
		elapsed := time.Since(start)
		pct := int32(100)
		if dur > 0 && elapsed < dur {
			pct = int32(elapsed * 100 / dur)
		}
		if inj != nil && pct >= inj.percent {
			if inj.percent != last {
				t.setProgress(inj.percent)
			}
			if inj.hang {
				select { // frozen until cancelled
				case <-t.cancel:
				case <-t.lost:
				}
				canceled()
				return
			}
			e.release(t)
			t.fail(lmf(e.fillFault(inj.fault, p), inj.message))
			return
		}
		if pct >= 100 {
			break
		}
		if pct != last {
			t.setProgress(pct)
			last = pct
		}
		if t.sleep(minDuration(e.cfg.tick, dur-elapsed)) {
			canceled()
			return
		}
	}

	if t.cancelled() || t.isLost() {
		canceled()
		return
	}
	if !t.settle() {
		return // a restart dropped it first
	}
	if err := e.commit(p); err != nil {
		e.release(t)
		t.fail(lmf(&types.ManagedObjectNotFound{Obj: p.vm.ref}, err.Error()))
		return
	}
	e.release(t)
	t.succeed(nil)
}

func minDuration(a, b time.Duration) time.Duration {
	if b < a {
		return b
	}
	return a
}

// ---------------------------------------------------------------------------------------------------------------
// Commit: move the VM and fix the inverse lists (host.vm, resourcePool.vm, datastore.vm).

func (e *ext) commit(p *plan) error {
	vm, ok := simulator.Map.Get(p.vm.ref).(*simulator.VirtualMachine)
	if !ok {
		return fmt.Errorf("virtual machine %s no longer exists", p.vm.ref.Value)
	}
	// Look up datastore names and directories before taking the VM lock (one object lock at a time).
	var files *fileMove
	if p.dstDS != nil {
		files = &fileMove{oldPaths: map[string]string{}, dst: *p.dstDS, dstName: p.dstDSName}
		for _, ds := range p.vm.ds {
			if n, ok := dsName(ds); ok {
				files.oldPaths[n], _ = dsPath(ds)
			}
		}
		files.dstPath, _ = dsPath(*p.dstDS)
	}
	var oldDS []types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		var changes []types.PropertyChange
		if p.dstHost != p.srcHost {
			h := p.dstHost
			changes = append(changes,
				types.PropertyChange{Name: "runtime.host", Val: &h},
				types.PropertyChange{Name: "summary.runtime.host", Val: &h})
		}
		if p.dstPool != p.srcPool {
			rp := p.dstPool
			changes = append(changes, types.PropertyChange{Name: "resourcePool", Val: &rp})
		}
		if files != nil {
			oldDS = append(oldDS, vm.Datastore...)
			files.apply(vm)
			changes = append(changes, types.PropertyChange{Name: "datastore", Val: []types.ManagedObjectReference{*p.dstDS}})
		}
		if len(changes) > 0 {
			simulator.Map.Update(vm, changes)
		}
	})
	if files != nil && files.from != "" {
		if err := os.Rename(files.from, files.to); err != nil && !os.IsNotExist(err) {
			log.Printf("vmmove: moving %s -> %s: %v", files.from, files.to, err)
		}
	}

	if p.dstHost != p.srcHost {
		editVMList(p.srcHost, p.vm.ref, false)
		editVMList(p.dstHost, p.vm.ref, true)
	}
	if p.dstPool != p.srcPool {
		editVMList(p.srcPool, p.vm.ref, false)
		editVMList(p.dstPool, p.vm.ref, true)
	}
	if p.dstDS != nil {
		for _, ds := range oldDS {
			if ds != *p.dstDS {
				editVMList(ds, p.vm.ref, false)
			}
		}
		editVMList(*p.dstDS, p.vm.ref, true)
	}
	return nil
}

// editVMList adds or removes vm in the "vm" property of a HostSystem, ResourcePool or Datastore, through
// Map.Update so WaitForUpdatesEx clients see the change.
func editVMList(obj types.ManagedObjectReference, vm types.ManagedObjectReference, add bool) {
	o := simulator.Map.Get(obj)
	if o == nil {
		return
	}
	simulator.Map.WithLock(o, func() {
		var field *[]types.ManagedObjectReference
		switch x := o.(type) {
		case *simulator.HostSystem:
			field = &x.Vm
		case *simulator.ResourcePool:
			field = &x.Vm
		case *simulator.Datastore:
			field = &x.Vm
		default:
			return
		}
		var list []types.ManagedObjectReference
		for _, r := range *field {
			if r != vm {
				list = append(list, r)
			}
		}
		if add {
			list = append(list, vm)
		}
		simulator.Map.Update(o, []types.PropertyChange{{Name: "vm", Val: list}})
	})
}

// fileMove describes a storage move: "[old] path" becomes "[new] path" in the VM's file properties and disk
// backings, and the VM's directory moves between the datastores' local directories (best effort).
type fileMove struct {
	oldPaths         map[string]string // old datastore name -> local directory
	dst              types.ManagedObjectReference
	dstName, dstPath string
	from, to         string // directory move computed by apply
}

// apply rewrites the VM's paths. Call with the VM locked; touches no other object.
func (m *fileMove) apply(vm *simulator.VirtualMachine) {
	if vm.Config == nil {
		return
	}
	swap := func(s string) string {
		name, rel := splitDSPath(s)
		if _, ok := m.oldPaths[name]; !ok || name == "" {
			return s
		}
		return "[" + m.dstName + "] " + rel
	}
	f := vm.Config.Files
	if name, rel := splitDSPath(f.VmPathName); name != "" {
		dir := filepath.Dir(rel)
		if src := m.oldPaths[name]; src != "" && m.dstPath != "" && dir != "." && dir != "" {
			m.from, m.to = filepath.Join(src, dir), filepath.Join(m.dstPath, dir)
		}
	}
	f.VmPathName, f.SnapshotDirectory = swap(f.VmPathName), swap(f.SnapshotDirectory)
	f.SuspendDirectory, f.LogDirectory = swap(f.SuspendDirectory), swap(f.LogDirectory)
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "config.files", Val: f},
		{Name: "summary.config.vmPathName", Val: f.VmPathName},
	})
	for _, dev := range vm.Config.Hardware.Device {
		if b, ok := dev.GetVirtualDevice().Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			fb := b.GetVirtualDeviceFileBackingInfo()
			if n := swap(fb.FileName); n != fb.FileName {
				fb.FileName = n
				d := m.dst
				fb.Datastore = &d
			}
		}
	}
}

func splitDSPath(p string) (string, string) {
	if !strings.HasPrefix(p, "[") {
		return "", p
	}
	i := strings.Index(p, "]")
	if i < 0 {
		return "", p
	}
	return p[1:i], strings.TrimSpace(p[i+1:])
}

// dsPath returns the local directory backing a datastore.
func dsPath(ref types.ManagedObjectReference) (string, bool) {
	d, ok := simulator.Map.Get(ref).(*simulator.Datastore)
	if !ok {
		return "", false
	}
	var path string
	simulator.Map.WithLock(d, func() {
		if d.Info == nil {
			return
		}
		if li, ok := d.Info.(*types.LocalDatastoreInfo); ok && li.Path != "" {
			path = li.Path
		} else {
			path = strings.TrimPrefix(d.Info.GetDatastoreInfo().Url, "file://")
		}
	})
	return path, path != ""
}
