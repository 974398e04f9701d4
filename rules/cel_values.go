package rules

import (
	"fmt"
	"reflect"
	"slices"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"github.com/scanhook/scanhook/internal/alert"
)

// ext.NativeTypes declares `alert` and `device` from celAlert and celDevice,
// so type checking, cost estimation, `scanhook.Device{...}` construction and
// error texts stay cel-go's. Its runtime values, though, reflect on every
// field access and rebuild a list (and box every element again) each time
// a `when` reads alert.tags: about four allocations per CEL rule. celTypes
// sits on top of it and hands the interpreter celAlertObj / celDeviceObj
// instead, which box each field at most once per Evaluate and keep their
// lists.

// The fields of celAlert and celDevice as CEL names them, by index into
// the objects' value caches. newCELTypes checks them against what
// ext.NativeTypes derived from the struct tags.
const (
	aID = iota
	aSource
	aSeverity
	aSeverityRank
	aTitle
	aDescription
	aCategory
	aDetectionSource
	aThreatFamily
	aStatus
	aMitreTechniques
	aTags
	aTenantID
	aURL
	aDevices
	nAlertFields
)

var celAlertFields = [nAlertFields]string{
	aID: "id", aSource: "source", aSeverity: "severity", aSeverityRank: "severity_rank",
	aTitle: "title", aDescription: "description", aCategory: "category",
	aDetectionSource: "detection_source", aThreatFamily: "threat_family", aStatus: "status",
	aMitreTechniques: "mitre_techniques", aTags: "tags", aTenantID: "tenant_id", aURL: "url",
	aDevices: "devices",
}

const (
	dID = iota
	dDNSName
	dAADDeviceID
	nDeviceFields
)

var celDeviceFields = [nDeviceFields]string{dID: "id", dDNSName: "dns_name", dAADDeviceID: "aad_device_id"}

const (
	celAlertTypeName  = "scanhook.Alert"
	celDeviceTypeName = "scanhook.Device"
)

// celTypes is the environment's type provider and adapter. Everything but
// field access on alerts and devices is the base registry's.
type celTypes struct {
	base        types.Provider
	baseAdapter types.Adapter
	// alertType and deviceType are the runtime types the base registry
	// gives celAlert and celDevice values (what type(x) returns).
	alertType, deviceType typeValue
	// fields maps struct type name and field name to accessors that read
	// celAlertObj / celDeviceObj directly. Devices have two names: their
	// alias, and the Go name the checker gives alert.devices' elements.
	fields map[[2]string]*types.FieldType
}

// typeValue is a type that is also a value, as type(alert) returns.
type typeValue interface {
	ref.Type
	ref.Val
}

// celFastObjects installs celTypes over the environment's provider and
// adapter; it must follow ext.NativeTypes.
func celFastObjects() cel.EnvOption {
	return func(env *cel.Env) (*cel.Env, error) {
		t, err := newCELTypes(env.CELTypeProvider(), env.CELTypeAdapter())
		if err != nil {
			return nil, err
		}
		env, err = cel.CustomTypeAdapter(t)(env)
		if err != nil {
			return nil, err
		}
		return cel.CustomTypeProvider(t)(env)
	}
}

func newCELTypes(base types.Provider, adapter types.Adapter) (*celTypes, error) {
	alertType, okA := adapter.NativeToValue(&celAlert{}).Type().(typeValue)
	deviceType, okD := adapter.NativeToValue(&celDevice{}).Type().(typeValue)
	if !okA || !okD || alertType.TypeName() != celAlertTypeName || deviceType.TypeName() != celDeviceTypeName {
		return nil, fmt.Errorf("celAlert and celDevice are not the native types %s and %s", celAlertTypeName, celDeviceTypeName)
	}
	t := &celTypes{
		base:        base,
		baseAdapter: adapter,
		alertType:   alertType,
		deviceType:  deviceType,
		fields:      map[[2]string]*types.FieldType{},
	}
	if err := addFastFields[*celAlertObj](t, base, celAlertTypeName, celAlertFields[:]); err != nil {
		return nil, err
	}
	devs := t.fields[[2]string{celAlertTypeName, celAlertFields[aDevices]}].Type
	if devs.Kind() != types.ListKind || len(devs.Parameters()) != 1 {
		return nil, fmt.Errorf("%s.devices is %s, want a list", celAlertTypeName, devs)
	}
	for _, typeName := range []string{celDeviceTypeName, devs.Parameters()[0].TypeName()} {
		if err := addFastFields[*celDeviceObj](t, base, typeName, celDeviceFields[:]); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// fastObject is what celAlertObj and celDeviceObj give field access by.
type fastObject interface {
	isSet(i int) bool
	field(i int) ref.Val
}

// addFastFields makes field access on typeName read an O directly when it is
// one, and go through the base registry otherwise.
func addFastFields[O fastObject](t *celTypes, base types.Provider, typeName string, names []string) error {
	if err := checkFieldNames(base, typeName, names); err != nil {
		return err
	}
	for i, name := range names {
		ft, ok := base.FindStructFieldType(typeName, name)
		if !ok {
			return fmt.Errorf("%s has no field %s", typeName, name)
		}
		t.fields[[2]string{typeName, name}] = &types.FieldType{
			Type: ft.Type,
			IsSet: func(obj any) bool {
				if o, ok := obj.(O); ok {
					return o.isSet(i)
				}
				return ft.IsSet(obj)
			},
			GetFrom: func(obj any) (any, error) {
				if o, ok := obj.(O); ok {
					return o.field(i), nil
				}
				return ft.GetFrom(obj)
			},
		}
	}
	return nil
}

// checkFieldNames makes sure the field tables above and the struct tags
// agree, so that no field reaches the checker without an accessor here.
func checkFieldNames(p types.Provider, typeName string, want []string) error {
	got, ok := p.FindStructFieldNames(typeName)
	if !ok {
		return fmt.Errorf("type %s is not declared", typeName)
	}
	got, want = slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s has fields %v, the accessors know %v", typeName, got, want)
	}
	return nil
}

func (t *celTypes) EnumValue(name string) ref.Val { return t.base.EnumValue(name) }

func (t *celTypes) FindIdent(name string) (ref.Val, bool) { return t.base.FindIdent(name) }

func (t *celTypes) FindStructType(name string) (*types.Type, bool) {
	return t.base.FindStructType(name)
}

func (t *celTypes) FindStructFieldNames(name string) ([]string, bool) {
	return t.base.FindStructFieldNames(name)
}

func (t *celTypes) FindStructFieldType(structType, field string) (*types.FieldType, bool) {
	if ft, ok := t.fields[[2]string{structType, field}]; ok {
		return ft, true
	}
	return t.base.FindStructFieldType(structType, field)
}

// NewValue builds `scanhook.Device{...}` and the like the base way, then
// wraps the result so that every alert or device value an expression can
// meet is one kind of object (equality needs both sides to be).
func (t *celTypes) NewValue(structType string, fields map[string]ref.Val) ref.Val {
	v := t.base.NewValue(structType, fields)
	switch x := v.Value().(type) {
	case *celAlert:
		return t.alertValue(x)
	case *celDevice:
		return t.deviceValue(x)
	}
	return v
}

func (t *celTypes) NativeToValue(v any) ref.Val {
	switch x := v.(type) {
	case ref.Val:
		return x
	case *celAlert:
		if x == nil {
			return types.NullValue
		}
		return t.alertValue(x)
	case celAlert:
		return t.alertValue(&x)
	case *celDevice:
		if x == nil {
			return types.NullValue
		}
		return t.deviceValue(x)
	case celDevice:
		return t.deviceValue(&x)
	}
	return t.baseAdapter.NativeToValue(v)
}

// alertValue wraps a constructed alert. Such a value may be folded into a
// program as a constant and then be read by concurrent evaluations, so it
// caches nothing.
func (t *celTypes) alertValue(c *celAlert) *celAlertObj {
	o := &celAlertObj{t: t, v: *c}
	o.v.Devices = nil
	if c.Devices != nil {
		o.devs = make([]celDeviceObj, len(c.Devices))
		for i, d := range c.Devices {
			o.devs[i] = celDeviceObj{t: t, v: d}
		}
	}
	return o
}

func (t *celTypes) deviceValue(d *celDevice) *celDeviceObj {
	return &celDeviceObj{t: t, v: *d}
}

// celState is what one Evaluate allocates for CEL, once: the alert and
// device values, their caches and room for short lists. It is the
// activation the programs run against.
type celState struct {
	alert  celAlertObj
	device *celDeviceObj // the device being decided
	devBuf [2]celDeviceObj
	valBuf [6]ref.Val
	valN   int
}

func newCELState(t *celTypes, a *alert.Alert) *celState {
	s := &celState{}
	s.alert = celAlertObj{
		t:     t,
		state: s,
		v: celAlert{
			ID:              a.ID,
			Source:          a.Source,
			Severity:        string(a.Severity),
			SeverityRank:    int64(a.Severity.Rank()),
			Title:           a.Title,
			Description:     a.Description,
			Category:        a.Category,
			DetectionSource: a.DetectionSource,
			ThreatFamily:    a.ThreatFamily,
			Status:          a.Status,
			MitreTechniques: nonNil(a.MitreTechniques),
			Tags:            nonNil(a.Tags),
			TenantID:        a.TenantID,
			URL:             a.URL,
		},
	}
	devs := s.devBuf[:0]
	if len(a.Devices) > len(s.devBuf) {
		devs = make([]celDeviceObj, 0, len(a.Devices))
	}
	for _, d := range a.Devices {
		devs = append(devs, celDeviceObj{t: t, cache: true, v: celDevice{ID: d.ID, DNSName: d.DNSName, AADDeviceID: d.AADDeviceID}})
	}
	s.alert.devs = devs
	return s
}

// vals returns room for n list elements, from valBuf while it lasts.
func (s *celState) vals(n int) []ref.Val {
	if s.valN+n <= len(s.valBuf) {
		v := s.valBuf[s.valN : s.valN+n : s.valN+n]
		s.valN += n
		return v
	}
	return make([]ref.Val, n)
}

func (s *celState) ResolveName(name string) (any, bool) {
	switch name {
	case "alert":
		return &s.alert, true
	case "device":
		if s.device != nil {
			return s.device, true
		}
	}
	return nil, false
}

func (s *celState) Parent() interpreter.Activation { return nil }

// celAlertObj is `alert` at runtime.
type celAlertObj struct {
	t *celTypes
	// state is set for the alert being evaluated, whose field values are
	// then kept in vals; nil for constructed alerts.
	state *celState
	v     celAlert // v.Devices unused: devs holds them
	devs  []celDeviceObj
	vals  [nAlertFields]ref.Val
}

func (o *celAlertObj) field(i int) ref.Val {
	if v := o.vals[i]; v != nil {
		return v
	}
	var v ref.Val
	switch i {
	case aSeverityRank:
		v = types.Int(o.v.SeverityRank)
	case aMitreTechniques:
		v = o.stringList(o.v.MitreTechniques)
	case aTags:
		v = o.stringList(o.v.Tags)
	case aDevices:
		elems := o.elems(len(o.devs))
		for j := range o.devs {
			elems[j] = &o.devs[j]
		}
		v = types.NewRefValList(o.t, elems)
	default:
		v = types.String(o.str(i))
	}
	if o.state != nil {
		o.vals[i] = v
	}
	return v
}

// str is string field i.
func (o *celAlertObj) str(i int) string {
	switch i {
	case aID:
		return o.v.ID
	case aSource:
		return o.v.Source
	case aSeverity:
		return o.v.Severity
	case aTitle:
		return o.v.Title
	case aDescription:
		return o.v.Description
	case aCategory:
		return o.v.Category
	case aDetectionSource:
		return o.v.DetectionSource
	case aThreatFamily:
		return o.v.ThreatFamily
	case aStatus:
		return o.v.Status
	case aTenantID:
		return o.v.TenantID
	case aURL:
		return o.v.URL
	}
	return ""
}

// stringList boxes every element once, where a list of Go strings would
// box them again on each iteration.
func (o *celAlertObj) stringList(s []string) ref.Val {
	elems := o.elems(len(s))
	for j, e := range s {
		elems[j] = types.String(e)
	}
	return types.NewRefValList(o.t, elems)
}

func (o *celAlertObj) elems(n int) []ref.Val {
	if o.state != nil {
		return o.state.vals(n)
	}
	return make([]ref.Val, n)
}

// isSet is ext.NativeTypes' presence test: a non-zero value (a list is set
// when not nil, even if empty).
func (o *celAlertObj) isSet(i int) bool {
	switch i {
	case aSeverityRank:
		return o.v.SeverityRank != 0
	case aMitreTechniques:
		return o.v.MitreTechniques != nil
	case aTags:
		return o.v.Tags != nil
	case aDevices:
		return o.devs != nil
	}
	return o.str(i) != ""
}

// native is the alert as the base registry would hold it; only the rare
// operations (equality, conversion) need it.
func (o *celAlertObj) native() *celAlert {
	c := o.v
	if o.devs != nil {
		c.Devices = make([]celDevice, len(o.devs))
		for i := range o.devs {
			c.Devices[i] = o.devs[i].v
		}
	}
	return &c
}

func (o *celAlertObj) ConvertToNative(typeDesc reflect.Type) (any, error) {
	return o.t.baseAdapter.NativeToValue(o.native()).ConvertToNative(typeDesc)
}

func (o *celAlertObj) ConvertToType(typeVal ref.Type) ref.Val {
	return convertObjToType(o, o.t.alertType, typeVal)
}

func (o *celAlertObj) Equal(other ref.Val) ref.Val {
	x, ok := other.(*celAlertObj)
	if !ok {
		return types.False
	}
	return types.Bool(reflect.DeepEqual(o.native(), x.native()))
}

func (o *celAlertObj) Type() ref.Type { return o.t.alertType }

// Value is the object itself: the field accessors are handed Value().
func (o *celAlertObj) Value() any { return o }

func (o *celAlertObj) IsZeroValue() bool { return reflect.ValueOf(*o.native()).IsZero() }

func (o *celAlertObj) Get(field ref.Val) ref.Val {
	i, err := fieldIndex(celAlertFields[:], field)
	if err != nil {
		return err
	}
	return o.field(i)
}

func (o *celAlertObj) IsSet(field ref.Val) ref.Val {
	i, err := fieldIndex(celAlertFields[:], field)
	if err != nil {
		return err
	}
	return types.Bool(o.isSet(i))
}

func (o *celAlertObj) AggregateSize(sizer types.AggregateSizer) uint32 {
	return aggregateSize(o.t.baseAdapter.NativeToValue(o.native()), sizer)
}

// celDeviceObj is `device`, and an element of alert.devices, at runtime.
type celDeviceObj struct {
	t *celTypes
	// cache is set for the alert's own devices (one goroutine's), not for
	// constructed ones.
	cache bool
	v     celDevice
	vals  [nDeviceFields]ref.Val
}

func (o *celDeviceObj) field(i int) ref.Val {
	if v := o.vals[i]; v != nil {
		return v
	}
	v := ref.Val(types.String(o.str(i)))
	if o.cache {
		o.vals[i] = v
	}
	return v
}

func (o *celDeviceObj) str(i int) string {
	switch i {
	case dID:
		return o.v.ID
	case dDNSName:
		return o.v.DNSName
	case dAADDeviceID:
		return o.v.AADDeviceID
	}
	return ""
}

func (o *celDeviceObj) isSet(i int) bool { return o.str(i) != "" }

func (o *celDeviceObj) ConvertToNative(typeDesc reflect.Type) (any, error) {
	d := o.v
	return o.t.baseAdapter.NativeToValue(&d).ConvertToNative(typeDesc)
}

func (o *celDeviceObj) ConvertToType(typeVal ref.Type) ref.Val {
	return convertObjToType(o, o.t.deviceType, typeVal)
}

func (o *celDeviceObj) Equal(other ref.Val) ref.Val {
	x, ok := other.(*celDeviceObj)
	return types.Bool(ok && o.v == x.v)
}

func (o *celDeviceObj) Type() ref.Type { return o.t.deviceType }

func (o *celDeviceObj) Value() any { return o }

func (o *celDeviceObj) IsZeroValue() bool { return o.v == celDevice{} }

func (o *celDeviceObj) Get(field ref.Val) ref.Val {
	i, err := fieldIndex(celDeviceFields[:], field)
	if err != nil {
		return err
	}
	return o.field(i)
}

func (o *celDeviceObj) IsSet(field ref.Val) ref.Val {
	i, err := fieldIndex(celDeviceFields[:], field)
	if err != nil {
		return err
	}
	return types.Bool(o.isSet(i))
}

func (o *celDeviceObj) AggregateSize(sizer types.AggregateSizer) uint32 {
	d := o.v
	return aggregateSize(o.t.baseAdapter.NativeToValue(&d), sizer)
}

// fieldIndex resolves a field name given at runtime (dyn(alert).title),
// with the base registry's errors.
func fieldIndex(names []string, field ref.Val) (int, ref.Val) {
	name, ok := field.(types.String)
	if !ok {
		return 0, types.MaybeNoSuchOverloadErr(field)
	}
	if i := slices.Index(names, string(name)); i >= 0 {
		return i, nil
	}
	return 0, types.NewErr("no such field: %s", name)
}

func convertObjToType(o ref.Val, own typeValue, typeVal ref.Type) ref.Val {
	if typeVal == types.TypeType {
		return own
	}
	if typeVal.TypeName() == own.TypeName() {
		return o
	}
	return types.NewErr("type conversion error from '%s' to '%s'", own, typeVal)
}

func aggregateSize(v ref.Val, sizer types.AggregateSizer) uint32 {
	if a, ok := v.(types.AggregateSizeVisitor); ok {
		return a.AggregateSize(sizer)
	}
	return 1
}
