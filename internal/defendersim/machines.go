package defendersim

import (
	"crypto/sha1" //nolint:gosec // only to derive stable fake ids
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

var machineIDRe = regexp.MustCompile(`^[0-9a-f]{40}$`)

var healthStatuses = []string{"Active", "Inactive", "ImpairedCommunication", "NoSensorData", "NoSensorDataImpairedCommunication", "Unknown"}

var machineSchema = schema{
	"id":              {kind: kindString},
	"computerDnsName": {kind: kindString},
	"aadDeviceId":     {kind: kindString},
	"lastIpAddress":   {kind: kindString},
	"osPlatform":      {kind: kindString},
	"healthStatus":    {kind: kindEnum, enums: healthStatuses},
	"rbacGroupId":     {kind: kindInt},
	"lastSeen":        {kind: kindTime},
	"machineTags":     {kind: kindStringList},
}

// GenerateMachines returns n machines with stable ids, names and addresses,
// the same for every call: mostly Windows workstations and servers.
func GenerateMachines(n int) []Machine {
	platforms := []string{"Windows10", "Windows11", "Windows11", "WindowsServer2022", "WindowsServer2019"}
	tags := [][]string{{}, {"crown-jewel"}, {"finance"}, {"vip", "finance"}, {}}
	out := make([]Machine, n)
	for i := range out {
		sum := sha1.Sum(fmt.Appendf(nil, "defender-sim machine %d", i)) //nolint:gosec // not security
		aad := sha256.Sum256(fmt.Appendf(nil, "defender-sim aad %d", i))
		a := aad[:16]
		prefix := "ws"
		if strings.HasPrefix(platforms[i%len(platforms)], "WindowsServer") {
			prefix = "srv"
		}
		out[i] = Machine{
			ID:              hex.EncodeToString(sum[:]),
			ComputerDNSName: fmt.Sprintf("%s-%03d.contoso.com", prefix, i+1),
			OSPlatform:      platforms[i%len(platforms)],
			HealthStatus:    "Active",
			AADDeviceID:     fmt.Sprintf("%x-%x-%x-%x-%x", a[0:4], a[4:6], a[6:8], a[8:10], a[10:16]),
			MachineTags:     append([]string{}, tags[i%len(tags)]...),
			LastIPAddress:   fmt.Sprintf("10.0.%d.%d", (i/250)%256, i%250+1),
			RBACGroupID:     1 + i%3,
		}
	}
	return out
}

// inventory is immutable after New: lookups need no lock.
type inventory struct {
	list   []Machine
	byID   map[string]int
	byName map[string]int // lower-case DNS name
	// byLabel maps a lower-case computer name (the first label of a DNS
	// name) to its machine, or to -1 when several machines share it.
	byLabel map[string]int
}

func newInventory(ms []Machine) (*inventory, error) {
	inv := &inventory{byID: map[string]int{}, byName: map[string]int{}, byLabel: map[string]int{}}
	for i, m := range ms {
		if !machineIDRe.MatchString(m.ID) {
			return nil, fmt.Errorf("defendersim: machine %d: id %q is not 40 lower-case hex characters", i, m.ID)
		}
		if _, dup := inv.byID[m.ID]; dup {
			return nil, fmt.Errorf("defendersim: machine %d: duplicate id %s", i, m.ID)
		}
		if m.ComputerDNSName == "" {
			return nil, fmt.Errorf("defendersim: machine %d (%s): computerDnsName is empty", i, m.ID)
		}
		name := strings.ToLower(m.ComputerDNSName)
		if _, dup := inv.byName[name]; dup {
			return nil, fmt.Errorf("defendersim: machine %d: duplicate computerDnsName %s", i, m.ComputerDNSName)
		}
		if m.HealthStatus == "" {
			m.HealthStatus = "Active"
		}
		if m.OSPlatform == "" {
			m.OSPlatform = "Windows11"
		}
		if m.MachineTags == nil {
			m.MachineTags = []string{}
		}
		m.MachineTags = append([]string{}, m.MachineTags...)
		inv.list = append(inv.list, m)
		inv.byID[m.ID] = i
		inv.byName[name] = i
		if label, _, ok := strings.Cut(name, "."); ok && label != "" {
			if _, dup := inv.byLabel[label]; dup {
				inv.byLabel[label] = -1
			} else {
				inv.byLabel[label] = i
			}
		}
	}
	return inv, nil
}

func (inv *inventory) all() []Machine {
	out := make([]Machine, len(inv.list))
	for i, m := range inv.list {
		m.MachineTags = append([]string{}, m.MachineTags...)
		out[i] = m
	}
	return out
}

// lookup finds a machine by id or computer name, case-insensitively, as
// GET /api/machines/{id} does. The computer name is the full DNS name or,
// for a key without a dot, the DNS name's first label ("ws-042" for
// ws-042.contoso.com): the documentation says the endpoint takes "the
// computer name", and Windows computer names have no domain. A label that
// several machines share (the same name in two domains) finds none: the
// documentation does not say which one Defender picks, and the simulator
// does not guess.
func (inv *inventory) lookup(key string) (Machine, bool) {
	key = strings.ToLower(key)
	if i, ok := inv.byID[key]; ok {
		return inv.list[i], true
	}
	if i, ok := inv.byName[key]; ok {
		return inv.list[i], true
	}
	if !strings.Contains(key, ".") {
		if i, ok := inv.byLabel[key]; ok && i >= 0 {
			return inv.list[i], true
		}
	}
	return Machine{}, false
}

// machineJSON is the Machine entity as the API returns it.
type machineJSON struct {
	ID                    string   `json:"id"`
	ComputerDNSName       string   `json:"computerDnsName"`
	FirstSeen             string   `json:"firstSeen"`
	LastSeen              string   `json:"lastSeen"`
	OSPlatform            string   `json:"osPlatform"`
	OSVersion             *string  `json:"osVersion"`
	OSProcessor           string   `json:"osProcessor"`
	Version               string   `json:"version"`
	LastIPAddress         string   `json:"lastIpAddress"`
	LastExternalIPAddress string   `json:"lastExternalIpAddress"`
	AgentVersion          string   `json:"agentVersion"`
	OSBuild               int      `json:"osBuild"`
	HealthStatus          string   `json:"healthStatus"`
	DeviceValue           string   `json:"deviceValue"`
	RBACGroupID           int      `json:"rbacGroupId"`
	RBACGroupName         string   `json:"rbacGroupName"`
	RiskScore             string   `json:"riskScore"`
	ExposureLevel         string   `json:"exposureLevel"`
	IsAADJoined           bool     `json:"isAadJoined"`
	AADDeviceID           string   `json:"aadDeviceId"`
	MachineTags           []string `json:"machineTags"`
	OnboardingStatus      string   `json:"onboardingStatus"`
	DefenderAVStatus      string   `json:"defenderAvStatus"`
}

// lastSeen is an hour before now for every machine, so lastSeen filters have
// something to compare.
func (s *Server) machineView(m Machine) machineJSON {
	now := s.now().UTC()
	return machineJSON{
		ID:                    m.ID,
		ComputerDNSName:       m.ComputerDNSName,
		FirstSeen:             formatTime(now.Add(-90 * 24 * time.Hour)),
		LastSeen:              formatTime(now.Add(-time.Hour)),
		OSPlatform:            m.OSPlatform,
		OSProcessor:           "x64",
		Version:               "22H2",
		LastIPAddress:         m.LastIPAddress,
		LastExternalIPAddress: "203.0.113.10",
		AgentVersion:          "10.8760.22621.1000",
		OSBuild:               22621,
		HealthStatus:          m.HealthStatus,
		DeviceValue:           "Normal",
		RBACGroupID:           m.RBACGroupID,
		RBACGroupName:         fmt.Sprintf("group-%d", m.RBACGroupID),
		RiskScore:             "None",
		ExposureLevel:         "Low",
		IsAADJoined:           m.AADDeviceID != "",
		AADDeviceID:           m.AADDeviceID,
		MachineTags:           m.MachineTags,
		OnboardingStatus:      "Onboarded",
		DefenderAVStatus:      "Updated",
	}
}

func (s *Server) machineGetter(m Machine) func(string) (value, bool) {
	now := s.now().UTC()
	return func(f string) (value, bool) {
		switch f {
		case "id":
			return value{str: m.ID}, true
		case "computerDnsName":
			return value{str: m.ComputerDNSName}, true
		case "aadDeviceId":
			return value{str: m.AADDeviceID, null: m.AADDeviceID == ""}, true
		case "lastIpAddress":
			return value{str: m.LastIPAddress, null: m.LastIPAddress == ""}, true
		case "osPlatform":
			return value{str: m.OSPlatform}, true
		case "healthStatus":
			return value{str: m.HealthStatus}, true
		case "rbacGroupId":
			return value{num: float64(m.RBACGroupID)}, true
		case "lastSeen":
			return value{tm: now.Add(-time.Hour).Truncate(100 * time.Nanosecond)}, true
		case "machineTags":
			return value{list: m.MachineTags}, true
		}
		return value{}, false
	}
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request, ri *reqInfo, params []string) {
	if len(r.URL.Query()) > 0 {
		writeAPIError(w, http.StatusBadRequest, "ODataError", "query options are not supported on a single machine", ri.corr)
		return
	}
	m, ok := s.inv.lookup(params[0])
	if !ok {
		writeAPIError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine %s was not found", params[0]), ri.corr)
		return
	}
	v := s.machineView(m)
	writeJSON(w, http.StatusOK, struct {
		Context string `json:"@odata.context"`
		machineJSON
	}{baseURL(r) + "/api/$metadata#Machines/$entity", v})
}

// queryOptions parses $filter, $top and $skip; other $ options are errors,
// as OData answers them.
func queryOptions(r *http.Request, sc schema) (filter node, top, skip int, err error) {
	q, perr := parseQueryStrict(r.URL.RawQuery)
	if perr != nil {
		return nil, 0, 0, perr
	}
	top = 10000
	for k, vs := range q {
		if len(vs) > 1 {
			return nil, 0, 0, fmt.Errorf("query option %s is given more than once", k)
		}
		v := vs[0]
		switch k {
		case "$filter":
			filter, err = parseFilter(v, sc)
			if err != nil {
				return nil, 0, 0, err
			}
		case "$top":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, 0, 0, fmt.Errorf("invalid value %q for $top: a non-negative integer is required", v)
			}
			if n > 10000 {
				return nil, 0, 0, fmt.Errorf("the limit of 10000 for $top is exceeded; the requested value is %d", n)
			}
			top = n
		case "$skip":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, 0, 0, fmt.Errorf("invalid value %q for $skip: a non-negative integer is required", v)
			}
			skip = n
		default:
			if strings.HasPrefix(k, "$") {
				return nil, 0, 0, fmt.Errorf("query option %s is not supported", k)
			}
		}
	}
	return filter, top, skip, nil
}

// parseQueryStrict rejects bad escapes instead of dropping the pair as
// url.ParseQuery would (a silently dropped $filter would list everything).
func parseQueryStrict(raw string) (map[string][]string, error) {
	out := map[string][]string{}
	if raw == "" {
		return out, nil
	}
	for _, pair := range strings.Split(raw, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		ku, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("malformed query string near %q: %w", k, err)
		}
		vu, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("malformed value of query option %s: %w", ku, err)
		}
		out[ku] = append(out[ku], vu)
	}
	return out, nil
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request, ri *reqInfo, _ []string) {
	filter, top, skip, err := queryOptions(r, machineSchema)
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, "ODataError", err.Error(), ri.corr)
		return
	}
	out := []machineJSON{}
	seen := 0
	for _, m := range s.inv.list {
		if filter != nil && !filter.eval(s.machineGetter(m), nil) {
			continue
		}
		seen++
		if seen <= skip {
			continue
		}
		if len(out) >= top {
			break
		}
		out = append(out, s.machineView(m))
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": baseURL(r) + "/api/$metadata#Machines",
		"value":          out,
	})
}

// findByIP answers findbyip(ip='…',timestamp=…): machines seen with that
// internal address within 15 minutes of the timestamp (an IPHistory entry),
// and machines whose last IP is that address, at any timestamp in the
// documented range (the last 30 days). Its rate limit is its own family.
func (s *Server) findByIP(w http.ResponseWriter, r *http.Request, ri *reqInfo, params []string) {
	args := strings.TrimSuffix(strings.TrimPrefix(params[0], "findbyip("), ")")
	var ip, ts string
	for _, a := range strings.Split(args, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(a), "=")
		if !ok {
			writeAPIError(w, http.StatusBadRequest, "InvalidInput", "findbyip takes ip='…' and timestamp=…", ri.corr)
			return
		}
		switch k {
		case "ip":
			ip = v
		case "timestamp":
			ts = v
		default:
			writeAPIError(w, http.StatusBadRequest, "InvalidInput", fmt.Sprintf("findbyip has no parameter %q", k), ri.corr)
			return
		}
	}
	if len(ip) < 2 || ip[0] != '\'' || ip[len(ip)-1] != '\'' {
		writeAPIError(w, http.StatusBadRequest, "InvalidInput", "findbyip ip must be a quoted string", ri.corr)
		return
	}
	addr, err := netip.ParseAddr(ip[1 : len(ip)-1])
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, "InvalidInput", "findbyip ip is not an IP address", ri.corr)
		return
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, "InvalidInput", "findbyip timestamp is not an ISO 8601 date-time", ri.corr)
		return
	}
	now := s.now()
	if t.After(now) || now.Sub(t) > 30*24*time.Hour {
		writeAPIError(w, http.StatusBadRequest, "InvalidInput", "findbyip timestamp must be within the last 30 days", ri.corr)
		return
	}
	out := []machineJSON{}
	for _, m := range s.inv.list {
		if m.LastIPAddress == addr.String() || seenWithin(m.IPHistory, addr.String(), t, 15*time.Minute) {
			out = append(out, s.machineView(m))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": baseURL(r) + "/api/$metadata#Machines",
		"value":          out,
	})
}

// seenWithin reports whether history has ip within d of t.
func seenWithin(history []IPSeen, ip string, t time.Time, d time.Duration) bool {
	for _, h := range history {
		if h.IP == ip && h.At.Sub(t) <= d && t.Sub(h.At) <= d {
			return true
		}
	}
	return false
}

// byIDOnly finds a machine by its id (hex, any case); the action endpoints
// take only ids.
func (inv *inventory) byIDOnly(id string) (Machine, bool) {
	if i, ok := inv.byID[strings.ToLower(id)]; ok {
		return inv.list[i], true
	}
	return Machine{}, false
}
