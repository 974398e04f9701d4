package defender

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// ActionTypeRunAntiVirusScan is the MachineAction type of a scan.
const ActionTypeRunAntiVirusScan = "RunAntiVirusScan"

// MachineAction is Defender's record of an action on a device.
type MachineAction struct {
	ID                      string          `json:"id"`
	Type                    string          `json:"type"`
	Scope                   string          `json:"scope,omitempty"`
	Requestor               string          `json:"requestor,omitempty"`
	RequestorComment        string          `json:"requestorComment,omitempty"`
	ExternalID              string          `json:"externalID,omitempty"`
	RequestSource           string          `json:"requestSource,omitempty"`
	Status                  string          `json:"status"`
	MachineID               string          `json:"machineId"`
	ComputerDNSName         string          `json:"computerDnsName,omitempty"`
	CreationDateTimeUTC     time.Time       `json:"creationDateTimeUtc"`
	LastUpdateDateTimeUTC   time.Time       `json:"lastUpdateDateTimeUtc"`
	CancellationRequestor   string          `json:"cancellationRequestor,omitempty"`
	CancellationComment     string          `json:"cancellationComment,omitempty"`
	CancellationDateTimeUTC time.Time       `json:"cancellationDateTimeUtc,omitzero"`
	Title                   string          `json:"title,omitempty"`
	Commands                json.RawMessage `json:"commands,omitempty"`
	ErrorHResult            int64           `json:"errorHResult,omitempty"`
	RelatedFileInfo         json.RawMessage `json:"relatedFileInfo,omitempty"`
}

// Final reports whether the action's status can no longer change.
func (a *MachineAction) Final() bool { return domain.ActionFinal(a.Status) }

// UnmarshalJSON accepts both spellings of the update time
// (lastUpdateDateTimeUtc, lastUpdateTimeUtc), null for any field, and
// timestamps with or without a zone (Defender writes UTC).
func (a *MachineAction) UnmarshalJSON(b []byte) error {
	var w struct {
		ID                      *string         `json:"id"`
		Type                    *string         `json:"type"`
		Scope                   *string         `json:"scope"`
		Requestor               *string         `json:"requestor"`
		RequestorComment        *string         `json:"requestorComment"`
		ExternalID              *string         `json:"externalID"`
		RequestSource           *string         `json:"requestSource"`
		Status                  *string         `json:"status"`
		MachineID               *string         `json:"machineId"`
		ComputerDNSName         *string         `json:"computerDnsName"`
		CreationDateTimeUTC     utcTime         `json:"creationDateTimeUtc"`
		LastUpdateDateTimeUTC   utcTime         `json:"lastUpdateDateTimeUtc"`
		LastUpdateTimeUTC       utcTime         `json:"lastUpdateTimeUtc"`
		CancellationRequestor   *string         `json:"cancellationRequestor"`
		CancellationComment     *string         `json:"cancellationComment"`
		CancellationDateTimeUTC utcTime         `json:"cancellationDateTimeUtc,omitzero"`
		Title                   *string         `json:"title"`
		Commands                json.RawMessage `json:"commands"`
		ErrorHResult            *int64          `json:"errorHResult"`
		RelatedFileInfo         json.RawMessage `json:"relatedFileInfo"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*a = MachineAction{
		ID:                      deref(w.ID),
		Type:                    deref(w.Type),
		Scope:                   deref(w.Scope),
		Requestor:               deref(w.Requestor),
		RequestorComment:        deref(w.RequestorComment),
		ExternalID:              deref(w.ExternalID),
		RequestSource:           deref(w.RequestSource),
		Status:                  deref(w.Status),
		MachineID:               deref(w.MachineID),
		ComputerDNSName:         deref(w.ComputerDNSName),
		CreationDateTimeUTC:     time.Time(w.CreationDateTimeUTC),
		LastUpdateDateTimeUTC:   time.Time(w.LastUpdateDateTimeUTC),
		CancellationRequestor:   deref(w.CancellationRequestor),
		CancellationComment:     deref(w.CancellationComment),
		CancellationDateTimeUTC: time.Time(w.CancellationDateTimeUTC),
		Title:                   deref(w.Title),
		Commands:                nonNull(w.Commands),
		RelatedFileInfo:         nonNull(w.RelatedFileInfo),
	}
	if a.LastUpdateDateTimeUTC.IsZero() {
		a.LastUpdateDateTimeUTC = time.Time(w.LastUpdateTimeUTC)
	}
	if w.ErrorHResult != nil {
		a.ErrorHResult = *w.ErrorHResult
	}
	return nil
}

// Machine is the part of Defender's machine entity scanhook uses.
type Machine struct {
	ID               string    `json:"id"`
	ComputerDNSName  string    `json:"computerDnsName"`
	FirstSeen        time.Time `json:"firstSeen,omitzero"`
	LastSeen         time.Time `json:"lastSeen,omitzero"`
	OSPlatform       string    `json:"osPlatform,omitempty"`
	OSVersion        string    `json:"osVersion,omitempty"`
	Version          string    `json:"version,omitempty"`
	LastIPAddress    string    `json:"lastIpAddress,omitempty"`
	LastExternalIP   string    `json:"lastExternalIpAddress,omitempty"`
	HealthStatus     string    `json:"healthStatus,omitempty"`
	OnboardingStatus string    `json:"onboardingStatus,omitempty"`
	RBACGroupID      int64     `json:"rbacGroupId,omitempty"`
	RBACGroupName    string    `json:"rbacGroupName,omitempty"`
	RiskScore        string    `json:"riskScore,omitempty"`
	ExposureLevel    string    `json:"exposureLevel,omitempty"`
	AADDeviceID      string    `json:"aadDeviceId,omitempty"`
	MachineTags      []string  `json:"machineTags,omitempty"`
}

// UnmarshalJSON tolerates null fields and zone-less timestamps.
func (m *Machine) UnmarshalJSON(b []byte) error {
	var w struct {
		ID               *string   `json:"id"`
		ComputerDNSName  *string   `json:"computerDnsName"`
		FirstSeen        utcTime   `json:"firstSeen,omitzero"`
		LastSeen         utcTime   `json:"lastSeen,omitzero"`
		OSPlatform       *string   `json:"osPlatform"`
		OSVersion        *string   `json:"osVersion"`
		Version          *string   `json:"version"`
		LastIPAddress    *string   `json:"lastIpAddress"`
		LastExternalIP   *string   `json:"lastExternalIpAddress"`
		HealthStatus     *string   `json:"healthStatus"`
		OnboardingStatus *string   `json:"onboardingStatus"`
		RBACGroupID      *int64    `json:"rbacGroupId"`
		RBACGroupName    *string   `json:"rbacGroupName"`
		RiskScore        *string   `json:"riskScore"`
		ExposureLevel    *string   `json:"exposureLevel"`
		AADDeviceID      *string   `json:"aadDeviceId"`
		MachineTags      []*string `json:"machineTags"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*m = Machine{
		ID:               deref(w.ID),
		ComputerDNSName:  deref(w.ComputerDNSName),
		FirstSeen:        time.Time(w.FirstSeen),
		LastSeen:         time.Time(w.LastSeen),
		OSPlatform:       deref(w.OSPlatform),
		OSVersion:        deref(w.OSVersion),
		Version:          deref(w.Version),
		LastIPAddress:    deref(w.LastIPAddress),
		LastExternalIP:   deref(w.LastExternalIP),
		HealthStatus:     deref(w.HealthStatus),
		OnboardingStatus: deref(w.OnboardingStatus),
		RBACGroupName:    deref(w.RBACGroupName),
		RiskScore:        deref(w.RiskScore),
		ExposureLevel:    deref(w.ExposureLevel),
		AADDeviceID:      deref(w.AADDeviceID),
	}
	if w.RBACGroupID != nil {
		m.RBACGroupID = *w.RBACGroupID
	}
	for _, t := range w.MachineTags {
		if t != nil && *t != "" {
			m.MachineTags = append(m.MachineTags, *t)
		}
	}
	return nil
}

// ActionFilter selects machine actions for ListActions. Empty fields do not
// filter. IDs are fetched in as few calls as the URL length allows.
type ActionFilter struct {
	IDs          []string
	MachineID    string
	Type         string // e.g. RunAntiVirusScan
	Status       string // e.g. Pending
	CreatedSince time.Time
	// Top caps the number of actions per call; 0 means len(IDs) when IDs
	// are given, else MaxTop.
	Top int
}

// MaxTop is the largest $top Defender accepts on machineactions.
const MaxTop = 10000

// deref reads a string field that JSON may have left null. Pointer
// fields decode null without a custom unmarshaler, which keeps decoding a
// long action list cheap.
func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// utcTime decodes an ISO 8601 timestamp, with or without zone (then UTC),
// and null or "" as the zero time.
type utcTime time.Time

var timeLayouts = [...]string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02T15:04:05.999999999Z0700",
}

func (t *utcTime) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*t = utcTime{}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	if s == "" {
		*t = utcTime{}
		return nil
	}
	for _, layout := range timeLayouts {
		if v, err := time.Parse(layout, s); err == nil {
			v = v.UTC()
			// An offset can push year 0001 or 9999 out of what JSON (and
			// the store after us) can write back.
			if v.Year() < 1 || v.Year() > 9999 {
				return fmt.Errorf("timestamp %q is out of range", truncate(s, 64))
			}
			*t = utcTime(v)
			return nil
		}
	}
	return fmt.Errorf("timestamp %q is not ISO 8601", truncate(s, 64))
}

func nonNull(m json.RawMessage) json.RawMessage {
	if len(m) == 0 || bytes.Equal(m, []byte("null")) {
		return nil
	}
	return m
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
