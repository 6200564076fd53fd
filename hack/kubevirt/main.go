// kubevirt-check reads one VirtualMachine (YAML or JSON) on stdin and decodes it strictly
// into KubeVirt's own Go types: an unknown field, a misspelled one or a value of the wrong
// type is an error, so what the worker prints is checked against the API it targets, not
// against a schema written by hand. A few rules of KubeVirt's admission webhook follow
// (rules.go). Exit status 0: it decodes; 1: it does not (the error
// on stderr); 2: stdin could not be read; 3: this kubevirt.io/api has a decoder the
// checker does not know how to make strict.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime/debug"
	"sort"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// A VirtualMachine is a few KiB; anything near this is not one.
const maxInput = 4 << 20

// These KubeVirt types decode themselves with a plain json.Unmarshal (to tidy IP addresses),
// which ignores unknown fields even when the caller asked for strictness: a misspelled
// field anywhere under spec.template.spec would pass. Each is decoded a second time,
// strictly, as a copy of its type without methods.
type (
	strictVMISpec     kubevirtv1.VirtualMachineInstanceSpec
	strictPodNetwork  kubevirtv1.PodNetwork
	strictDHCPOptions kubevirtv1.DHCPOptions
)

var strictCopies = []reflect.Type{
	reflect.TypeOf(kubevirtv1.VirtualMachineInstanceSpec{}),
	reflect.TypeOf(kubevirtv1.PodNetwork{}),
	reflect.TypeOf(kubevirtv1.DHCPOptions{}),
}

// Types with their own decoder that read one scalar (or, for managedFields, raw JSON kept
// as is): they hold no field names to misspell.
var scalarDecoders = []reflect.Type{
	reflect.TypeOf(metav1.Time{}),
	reflect.TypeOf(metav1.FieldsV1{}),
	reflect.TypeOf(resource.Quantity{}),
	reflect.TypeOf(intstr.IntOrString{}),
}

func main() {
	if unhandled := unhandledDecoders(); len(unhandled) > 0 {
		fmt.Fprintf(os.Stderr, "kubevirt-check: kubevirt.io/api %s has types that decode "+
			"themselves, which this checker cannot make strict: %v\n", apiVersion(), unhandled)
		os.Exit(3)
	}
	data, err := io.ReadAll(io.LimitReader(os.Stdin, maxInput+1))
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubevirt-check: reading stdin: %v\n", err)
		os.Exit(2)
	}
	if err := check(data); err != nil {
		fmt.Fprintf(os.Stderr, "kubevirt-check: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("kubevirt-check: a valid kubevirt.io/v1 VirtualMachine")
}

func check(data []byte) error {
	if len(data) > maxInput {
		return fmt.Errorf("input is larger than %d bytes", maxInput)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return errors.New("no VirtualMachine on stdin")
	}
	document, err := yaml.YAMLToJSONStrict(data) // a key given twice is an error too
	if err != nil {
		return fmt.Errorf("not YAML or JSON: %w", err)
	}
	var vm kubevirtv1.VirtualMachine
	if err := strictDecode(document, &vm); err != nil {
		return fmt.Errorf("not a VirtualMachine as kubevirt.io/api %s defines it: %w", apiVersion(), err)
	}
	// The type does not hold its own apiVersion and kind to a value; the API server does.
	want := kubevirtv1.SchemeGroupVersion.String()
	if vm.APIVersion != want || vm.Kind != "VirtualMachine" {
		return fmt.Errorf("apiVersion %q kind %q: want %q VirtualMachine", vm.APIVersion, vm.Kind, want)
	}
	if vm.Name == "" {
		return errors.New("metadata.name is empty")
	}
	if vm.Spec.Template == nil {
		return errors.New("spec.template is missing")
	}
	if err := checkSelfDecoded(document); err != nil {
		return err
	}
	return checkRules(&vm)
}

// checkSelfDecoded decodes again, strictly, the parts whose types decode themselves.
func checkSelfDecoded(document []byte) error {
	var outer struct {
		Spec struct {
			Template struct {
				Spec json.RawMessage `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(document, &outer); err != nil {
		return err
	}
	spec := outer.Spec.Template.Spec
	if spec == nil {
		return nil
	}
	if err := strictDecode(spec, &strictVMISpec{}); err != nil {
		return fmt.Errorf("spec.template.spec: %w", err)
	}
	var inner struct {
		Domain struct {
			Devices struct {
				Interfaces []struct {
					DHCPOptions json.RawMessage `json:"dhcpOptions"`
				} `json:"interfaces"`
			} `json:"devices"`
		} `json:"domain"`
		Networks []struct {
			Pod json.RawMessage `json:"pod"`
		} `json:"networks"`
	}
	if err := json.Unmarshal(spec, &inner); err != nil {
		return err
	}
	for i, network := range inner.Networks {
		if err := strictDecode(network.Pod, &strictPodNetwork{}); err != nil {
			return fmt.Errorf("spec.template.spec.networks[%d].pod: %w", i, err)
		}
	}
	for i, iface := range inner.Domain.Devices.Interfaces {
		if err := strictDecode(iface.DHCPOptions, &strictDHCPOptions{}); err != nil {
			return fmt.Errorf("spec.template.spec.domain.devices.interfaces[%d].dhcpOptions: %w", i, err)
		}
	}
	return nil
}

func strictDecode(data json.RawMessage, into any) error {
	if data == nil {
		return nil
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(into); err != nil {
		return err
	}
	if decoder.More() {
		return errors.New("more than one document")
	}
	return nil
}

// unhandledDecoders lists the struct types reachable from VirtualMachine that decode
// themselves and are neither scalars nor copied above: a newer kubevirt.io/api could add
// one, and the check would silently stop being strict under it.
func unhandledDecoders() []string {
	known := map[reflect.Type]bool{}
	for _, t := range append(append([]reflect.Type{}, strictCopies...), scalarDecoders...) {
		known[t] = true
	}
	unmarshaler := reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()
	seen := map[reflect.Type]bool{}
	var found []string
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		if seen[t] {
			return
		}
		seen[t] = true
		if known[t] {
			if isScalar(t) {
				return // a scalar's insides are its own business
			}
		} else if t.Kind() == reflect.Struct && reflect.PointerTo(t).Implements(unmarshaler) {
			found = append(found, t.PkgPath()+"."+t.Name())
		}
		switch t.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Array:
			walk(t.Elem())
		case reflect.Map:
			walk(t.Key())
			walk(t.Elem())
		case reflect.Struct:
			for i := 0; i < t.NumField(); i++ {
				walk(t.Field(i).Type)
			}
		}
	}
	walk(reflect.TypeOf(kubevirtv1.VirtualMachine{}))
	sort.Strings(found)
	return found
}

func isScalar(t reflect.Type) bool {
	for _, scalar := range scalarDecoders {
		if t == scalar {
			return true
		}
	}
	return false
}

// apiVersion is the kubevirt.io/api module version this checker was built with.
func apiVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "kubevirt.io/api" {
				return dep.Version
			}
		}
	}
	return "(unknown version)"
}
