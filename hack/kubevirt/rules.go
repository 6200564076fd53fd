package main

// Rules KubeVirt enforces beyond the shape of its types (in its admission webhook), for the
// parts a migrated VM uses. The allowed values come from kubevirt.io/api itself: its
// constants and the "supported values" its field documentation lists.

import (
	"fmt"
	"regexp"
	"strings"

	kubevirtv1 "kubevirt.io/api/core/v1"
)

var runStrategies = []kubevirtv1.VirtualMachineRunStrategy{
	kubevirtv1.RunStrategyAlways, kubevirtv1.RunStrategyHalted, kubevirtv1.RunStrategyManual,
	kubevirtv1.RunStrategyRerunOnFailure, kubevirtv1.RunStrategyOnce,
	kubevirtv1.RunStrategyWaitAsReceiver,
}

var listed = regexp.MustCompile(`(?i)(?:one of|supported values):\s*([a-z0-9_, ]+)\.?`)

func checkRules(vm *kubevirtv1.VirtualMachine) error {
	if s := vm.Spec.RunStrategy; s != nil && !contains(runStrategies, *s) {
		return fmt.Errorf("spec.runStrategy %q: not one of %v", *s, runStrategies)
	}
	spec := &vm.Spec.Template.Spec
	domain := &spec.Domain
	if fw := domain.Firmware; fw != nil && fw.Bootloader != nil && fw.Bootloader.EFI != nil {
		secure := fw.Bootloader.EFI.SecureBoot == nil || *fw.Bootloader.EFI.SecureBoot
		smm := domain.Features != nil && domain.Features.SMM != nil &&
			(domain.Features.SMM.Enabled == nil || *domain.Features.SMM.Enabled)
		if secure && !smm {
			return fmt.Errorf("EFI secure boot (on unless secureBoot: false) needs features.smm enabled")
		}
	}
	buses, err := documentedValues(kubevirtv1.DiskTarget{}.SwaggerDoc()["bus"])
	if err != nil {
		return err
	}
	models, err := documentedValues(kubevirtv1.Interface{}.SwaggerDoc()["model"])
	if err != nil {
		return err
	}
	volumes := map[string]bool{}
	for _, volume := range spec.Volumes {
		volumes[volume.Name] = true
	}
	boots := map[uint]string{}
	for i, disk := range domain.Devices.Disks {
		where := fmt.Sprintf("domain.devices.disks[%d] (%s)", i, disk.Name)
		if !volumes[disk.Name] {
			return fmt.Errorf("%s: no volume of that name", where)
		}
		if disk.Disk != nil && disk.Disk.Bus != "" && !contains(buses, string(disk.Disk.Bus)) {
			return fmt.Errorf("%s: bus %q is not one of %v", where, disk.Disk.Bus, buses)
		}
		if err := claimBoot(boots, disk.BootOrder, where); err != nil {
			return err
		}
	}
	networks := map[string]*kubevirtv1.Network{}
	pods := 0
	for i := range spec.Networks {
		networks[spec.Networks[i].Name] = &spec.Networks[i]
		if spec.Networks[i].Pod != nil {
			pods++
		}
	}
	if pods > 1 {
		return fmt.Errorf("%d pod networks: KubeVirt allows one", pods)
	}
	if len(spec.Networks) != len(domain.Devices.Interfaces) {
		return fmt.Errorf("%d networks for %d interfaces: each interface needs its own network",
			len(spec.Networks), len(domain.Devices.Interfaces))
	}
	for i, iface := range domain.Devices.Interfaces {
		where := fmt.Sprintf("domain.devices.interfaces[%d] (%s)", i, iface.Name)
		network := networks[iface.Name]
		if network == nil {
			return fmt.Errorf("%s: no network of that name", where)
		}
		if iface.Model != "" && !contains(models, iface.Model) {
			return fmt.Errorf("%s: model %q is not one of %v", where, iface.Model, models)
		}
		if iface.Masquerade != nil && network.Pod == nil {
			return fmt.Errorf("%s: masquerade works only on the pod network", where)
		}
		if err := claimBoot(boots, iface.BootOrder, where); err != nil {
			return err
		}
	}
	return nil
}

func claimBoot(boots map[uint]string, order *uint, where string) error {
	if order == nil {
		return nil
	}
	if *order < 1 {
		return fmt.Errorf("%s: bootOrder must be 1 or more", where)
	}
	if other, taken := boots[*order]; taken {
		return fmt.Errorf("%s: bootOrder %d is %s's too", where, *order, other)
	}
	boots[*order] = where
	return nil
}

// documentedValues reads "One of: a, b, c." or "supported values: a, b." from a field's
// documentation in kubevirt.io/api.
func documentedValues(doc string) ([]string, error) {
	match := listed.FindStringSubmatch(doc)
	if match == nil {
		return nil, fmt.Errorf("kubevirt.io/api %s no longer lists the values in %q", apiVersion(), doc)
	}
	var values []string
	for _, value := range strings.Split(match[1], ",") {
		if value = strings.TrimSpace(value); value != "" {
			values = append(values, value)
		}
	}
	return values, nil
}

func contains[T comparable](values []T, value T) bool {
	for _, v := range values {
		if v == value {
			return true
		}
	}
	return false
}
