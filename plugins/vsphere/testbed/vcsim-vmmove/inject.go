package main

// Per-VM test directives, read from the VM's config.extraConfig.
//
// A test sets them with an ordinary ReconfigVM_Task (extraConfig OptionValue), so no side channel,
// environment variable or extra endpoint is needed and the directive travels with the VM:
//
//	vmmove.inject           = "fail@<pct>:<FaultType>[:<message>]"  next migration fails at <pct>% with that fault
//	                          "hang@<pct>"                           next migration stops progressing at <pct>% and
//	                                                                 stays running (cancelable) until CancelTask
//	                          "refuse:<FaultType>[:<message>]"       next migration's task fails before it starts
//	                                                                 (queued -> error, no startTime)
//	                          Consumed (removed from extraConfig) when a migration picks it up: one shot.
//	vmmove.migrateDuration  = Go duration ("5s", "300ms"); overrides -migrate-duration for this VM (persistent).
//	vmmove.checkError       = "<FaultType>[:<message>]"  added to check.Result.error for this VM (persistent).
//	vmmove.checkWarning     = "<FaultType>[:<message>]"  added to check.Result.warning for this VM (persistent).
//	vmmove.answer           = "drop" | "late:<duration>"  the next migration request's answer is lost (variants.go).
//	vmmove.powerOn          = "fail:<FaultType>[:<message>]"  the next PowerOnVM_Task's task fails with that fault
//	                          and the VM stays off (one shot), as a host that cannot start it answers.
//
// <FaultType> is any vim25 fault type name known to govmomi (MigrationFault, Timedout, HostCommunication,
// InvalidState, GenericVmConfigFault, ...). Its fields are left at their zero values.

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	keyInject          = "vmmove.inject"
	keyMigrateDuration = "vmmove.migrateDuration"
	keyCheckError      = "vmmove.checkError"
	keyCheckWarning    = "vmmove.checkWarning"
	keyPowerOn         = "vmmove.powerOn"
)

// injection is a parsed vmmove.inject directive.
type injection struct {
	hang    bool                  // hang@pct: stop progressing, wait for cancel
	refuse  bool                  // refuse:Fault: the task fails while still queued
	percent int32                 // progress percentage at which it triggers
	fault   types.BaseMethodFault // fail@pct: the fault the task ends with
	message string
}

// parseInjection parses "fail@50:MigrationFault[:message]" or "hang@50".
func parseInjection(s string) (*injection, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if strings.HasPrefix(s, "refuse:") {
		name, msg, _ := strings.Cut(strings.TrimPrefix(s, "refuse:"), ":")
		f, err := newFault(strings.TrimSpace(name), msg)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: %v", keyInject, s, err)
		}
		return &injection{refuse: true, fault: f, message: messageOr(msg, "Injected refusal: "+name)}, nil
	}
	kind, rest, ok := strings.Cut(s, "@")
	if !ok {
		return nil, fmt.Errorf("%s=%q: expected fail@<pct>:<Fault> or hang@<pct>", keyInject, s)
	}
	pctStr, faultSpec, _ := strings.Cut(rest, ":")
	pct, err := strconv.Atoi(strings.TrimSpace(pctStr))
	if err != nil || pct < 0 || pct > 100 {
		return nil, fmt.Errorf("%s=%q: bad percentage", keyInject, s)
	}
	inj := &injection{percent: int32(pct)}
	switch kind {
	case "hang":
		inj.hang = true
	case "fail":
		name, msg, _ := strings.Cut(faultSpec, ":")
		if name == "" {
			name = "MigrationFault"
		}
		f, err := newFault(name, msg)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: %v", keyInject, s, err)
		}
		inj.fault, inj.message = f, messageOr(msg, "Injected failure: "+name)
	default:
		return nil, fmt.Errorf("%s=%q: unknown action %q", keyInject, s, kind)
	}
	return inj, nil
}

// newFault builds a zero-valued vim25 fault by type name, with msg as its faultMessage.
func newFault(name, msg string) (types.BaseMethodFault, error) {
	typ, ok := types.TypeFunc()(name)
	if !ok || typ.Kind() != reflect.Struct {
		return nil, fmt.Errorf("unknown fault type %q", name)
	}
	f, ok := reflect.New(typ).Interface().(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a MethodFault", name)
	}
	if msg != "" {
		f.GetMethodFault().FaultMessage = []types.LocalizableMessage{{Key: "vmmove.injected", Message: msg}}
	}
	return f, nil
}

// parseFaultSpec parses "<FaultType>[:<message>]" into a LocalizedMethodFault.
func parseFaultSpec(key, spec string) types.LocalizedMethodFault {
	name, msg, _ := strings.Cut(strings.TrimSpace(spec), ":")
	f, err := newFault(name, msg)
	if err != nil {
		return lmf(&types.InvalidArgument{InvalidProperty: key}, fmt.Sprintf("%s: %v", key, err))
	}
	return lmf(f, messageOr(msg, name))
}

func messageOr(msg, def string) string {
	if msg != "" {
		return msg
	}
	return def
}

// lmf wraps a fault with its localized message.
func lmf(f types.BaseMethodFault, msg string) types.LocalizedMethodFault {
	return types.LocalizedMethodFault{Fault: f, LocalizedMessage: msg}
}

// extraConfig returns the VM's string-valued extraConfig entries (the last entry wins for repeated keys,
// since the simulator's ReconfigVM_Task appends rather than replaces). Call with the VM locked.
func extraConfig(vm *simulator.VirtualMachine) map[string]string {
	m := make(map[string]string)
	if vm.Config == nil {
		return m
	}
	for _, ov := range vm.Config.ExtraConfig {
		o := ov.GetOptionValue()
		if s, ok := o.Value.(string); ok {
			m[o.Key] = s
		}
	}
	return m
}

// consumeExtraConfig removes every entry with the given key. Call with the VM locked.
func consumeExtraConfig(vm *simulator.VirtualMachine, key string) {
	if vm.Config == nil {
		return
	}
	var keep []types.BaseOptionValue
	for _, ov := range vm.Config.ExtraConfig {
		if ov.GetOptionValue().Key != key {
			keep = append(keep, ov)
		}
	}
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.extraConfig", Val: keep}})
}

// durationOverride parses vmmove.migrateDuration, falling back to def.
func durationOverride(ec map[string]string, def time.Duration) (time.Duration, error) {
	s, ok := ec[keyMigrateDuration]
	if !ok || strings.TrimSpace(s) == "" {
		return def, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < 0 {
		return def, fmt.Errorf("%s=%q: not a duration", keyMigrateDuration, s)
	}
	return d, nil
}

// fillFault gives an injected fault the fields a real vCenter sets on it (zero-valued otherwise): the target
// host of InvalidHostState, the VM's power state in InvalidPowerState, the other task of TaskInProgress (a task
// of another client is made up for it), the reason of MigrationNotReady.
func (e *ext) fillFault(f types.BaseMethodFault, p *plan) types.BaseMethodFault {
	switch x := f.(type) {
	case *types.InvalidHostState:
		if x.Host == nil && p.dstHost.Value != "" {
			h := p.dstHost
			x.Host = &h
		}
	case *types.InvalidPowerState:
		if x.ExistingState == "" {
			x.ExistingState = p.vm.power
		}
	case *types.TaskInProgress:
		if x.Task.Value == "" {
			x.Task = e.otherTask(p.vm)
		}
	case *types.MigrationNotReady:
		if x.Reason == "" {
			x.Reason = "The virtual machine is not ready to migrate."
		}
	}
	return f
}

// otherTask starts a short reconfigure task on vm, as if another client were changing it.
func (e *ext) otherTask(vm vmSnap) types.ManagedObjectReference {
	t := e.newTask(vm.ref, vm.name, "ReconfigVM_Task", "VirtualMachine.reconfigure", "other-client", false)
	simulator.Map.Put(t)
	t.setRunning()
	go func() {
		if !t.sleep(time.Second) {
			t.succeed(nil)
		}
	}()
	return t.Self
}

// hasExtra reports whether the VM ref carries the extraConfig key (false for any other object).
func hasExtra(ref types.ManagedObjectReference, key string) bool {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return false
	}
	found := false
	simulator.Map.WithLock(vm, func() { _, found = extraConfig(vm)[key] })
	return found
}
