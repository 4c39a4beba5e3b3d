package main

// Pre-checks: VirtualMachineProvisioningChecker (CheckRelocate_Task, CheckMigrate_Task,
// QueryVMotionCompatibilityEx_Task -> vim.vm.check.Result[]) and ServiceInstance.QueryVMotionCompatibility.
// They run the same rules as the migration itself (migrate.go: resolve), reporting every fault instead of the first.

import (
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// provChecker replaces the stock placeholder at ServiceContent.vmProvisioningChecker.
type provChecker struct {
	mo.VirtualMachineProvisioningChecker // first field: read by the property collector

	ext *ext
}

// CheckRelocateTask implements VirtualMachineProvisioningChecker.CheckRelocate_Task (testType is ignored).
func (c *provChecker) CheckRelocateTask(ctx *simulator.Context, req *types.CheckRelocate_Task) soap.HasFault {
	body := new(methods.CheckRelocate_TaskBody)
	r := request{vm: req.Vm, host: req.Spec.Host, pool: req.Spec.Pool, ds: req.Spec.Datastore, prop: "spec.", check: true}
	ref, f := c.ext.check(ctx, []request{r}, "CheckRelocate_Task", "vm.check.ProvisioningChecker.checkRelocate")
	if f != nil {
		body.Fault_ = simulator.Fault(f.msg, f.fault)
	} else {
		body.Res = &types.CheckRelocate_TaskResponse{Returnval: ref}
	}
	return body
}

// CheckMigrateTask implements VirtualMachineProvisioningChecker.CheckMigrate_Task (testType is ignored).
func (c *provChecker) CheckMigrateTask(ctx *simulator.Context, req *types.CheckMigrate_Task) soap.HasFault {
	body := new(methods.CheckMigrate_TaskBody)
	r := request{vm: req.Vm, host: req.Host, pool: req.Pool, state: req.State, check: true}
	ref, f := c.ext.check(ctx, []request{r}, "CheckMigrate_Task", "vm.check.ProvisioningChecker.checkMigrate")
	if f != nil {
		body.Fault_ = simulator.Fault(f.msg, f.fault)
	} else {
		body.Res = &types.CheckMigrate_TaskResponse{Returnval: ref}
	}
	return body
}

// QueryVMotionCompatibilityExTask implements VirtualMachineProvisioningChecker.QueryVMotionCompatibilityEx_Task:
// one result per (vm, host) pair, host compatibility only (maintenance/connection, datastore access,
// vmmove.checkError/checkWarning).
func (c *provChecker) QueryVMotionCompatibilityExTask(ctx *simulator.Context, req *types.QueryVMotionCompatibilityEx_Task) soap.HasFault {
	body := new(methods.QueryVMotionCompatibilityEx_TaskBody)
	var rs []request
	for _, vm := range req.Vm {
		for i := range req.Host {
			h := req.Host[i]
			rs = append(rs, request{vm: vm, host: &h, hostOnly: true, poolless: c.ext.cfg.compatExPoolless, check: true})
		}
	}
	ref, f := c.ext.check(ctx, rs, "QueryVMotionCompatibilityEx_Task", "vm.check.ProvisioningChecker.queryVMotionCompatibilityEx")
	if f != nil {
		body.Fault_ = simulator.Fault(f.msg, f.fault)
	} else {
		body.Res = &types.QueryVMotionCompatibilityEx_TaskResponse{Returnval: ref}
	}
	return body
}

// check evaluates requests and returns a task whose result is ArrayOfCheckResult.
func (e *ext) check(ctx *simulator.Context, rs []request, name, descID string) (types.ManagedObjectReference, *soapFaultErr) {
	var none types.ManagedObjectReference
	var results []types.CheckResult
	for _, r := range rs {
		p, sf := e.resolve(r)
		if sf != nil {
			return none, sf
		}
		vm, host := p.vm.ref, p.dstHost
		res := types.CheckResult{Vm: &vm, Error: p.errs, Warning: p.warns}
		if host.Value != "" {
			res.Host = &host
		}
		results = append(results, res)
	}
	var entity types.ManagedObjectReference
	entityName := ""
	if len(rs) > 0 {
		entity = rs[0].vm
		if s, ok := snapVM(entity); ok {
			entityName = s.name
		}
	}
	user := "vcsim"
	if ctx != nil && ctx.Session != nil {
		user = ctx.Session.UserName
	}
	t := e.newTask(entity, entityName, name, descID, user, false)
	simulator.Map.Put(t)
	result := &types.ArrayOfCheckResult{CheckResult: results}
	if e.cfg.checkDelay <= 0 {
		t.setRunning()
		t.succeed(result)
	} else {
		go func() {
			t.setRunning()
			time.Sleep(e.cfg.checkDelay)
			t.succeed(result)
		}()
	}
	return t.Self, nil
}

// siProxy receives ServiceInstance.QueryVMotionCompatibility (see ext.go).
type siProxy struct {
	Self types.ManagedObjectReference
	ext  *ext
}

func (p *siProxy) Reference() types.ManagedObjectReference { return p.Self }

// QueryVMotionCompatibility implements ServiceInstance.QueryVMotionCompatibility: for each host, the requested
// compatibility types ("cpu", "software"; both if unset) that pass. A host in maintenance mode or not connected,
// or a VM with vmmove.checkError set, passes none.
func (p *siProxy) QueryVMotionCompatibility(ctx *simulator.Context, req *types.QueryVMotionCompatibility) soap.HasFault {
	body := new(methods.QueryVMotionCompatibilityBody)
	vm, ok := snapVM(req.Vm)
	if !ok {
		f := notFound(req.Vm)
		body.Fault_ = simulator.Fault(f.msg, f.fault)
		return body
	}
	want := req.Compatibility
	if len(want) == 0 {
		want = []string{"cpu", "software"}
	}
	var out []types.HostVMotionCompatibility
	for _, ref := range req.Host {
		h, ok := snapHost(ref)
		if !ok {
			f := notFound(ref)
			body.Fault_ = simulator.Fault(f.msg, f.fault)
			return body
		}
		c := types.HostVMotionCompatibility{Host: ref}
		if !h.maint && (h.conn == "" || h.conn == types.HostSystemConnectionStateConnected) && vm.ec[keyCheckError] == "" {
			c.Compatibility = append([]string(nil), want...)
		}
		out = append(out, c)
	}
	body.Res = &types.QueryVMotionCompatibilityResponse{Returnval: out}
	return body
}
