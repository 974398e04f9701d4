package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

// pollOnce brings the status of up to PollBatch open actions up to date,
// least recently polled first, with one ListActions call per PollChunk ids:
// a few calls per tick whatever the number of scans in flight, well inside
// Defender's 100 calls a minute. It returns how many actions Defender
// reported on.
func (d *Dispatcher) pollOnce(ctx context.Context) (int, error) {
	open, err := d.st.OpenActions(ctx, d.opts.PollBatch)
	if err != nil {
		d.m.storeErrors.WithLabelValues("open_actions").Inc()
		return 0, fmt.Errorf("poll actions: %w", err)
	}
	// Defender may answer in another letter case: match ids case-blind and
	// report them as the store spells them.
	byKey := make(map[string]string, len(open))
	status := make(map[string]string, len(open))
	var ids []string
	for _, a := range open {
		if !defender.ValidActionID(a.ID) {
			// Would make the whole list call invalid; never sent.
			d.log.Warn("open action with an id that is not a GUID; not polled", "action_id", truncate(a.ID, 64), "job_id", a.JobID)
			continue
		}
		k := strings.ToLower(a.ID)
		if _, dup := byKey[k]; dup {
			continue
		}
		byKey[k] = a.ID
		status[a.ID] = a.Status
		ids = append(ids, a.ID)
	}
	reported := 0
	var errs []error
	for start := 0; start < len(ids); start += d.opts.PollChunk {
		chunk := ids[start:min(start+d.opts.PollChunk, len(ids))]
		list, err := d.def.ListActions(ctx, defender.ActionFilter{IDs: chunk})
		if err != nil {
			d.m.pollBatches.WithLabelValues("error").Inc()
			errs = append(errs, fmt.Errorf("list %d actions: %w", len(chunk), err))
			if defender.IsRetryable(err) || ctx.Err() != nil {
				// Throttled, breaker open or Defender down: the next tick
				// will do, no point spending more calls now.
				break
			}
			continue
		}
		d.m.pollBatches.WithLabelValues("ok").Inc()
		seen := make(map[string]bool, len(list))
		var updates []store.ActionUpdate
		for _, a := range list {
			k := strings.ToLower(a.ID)
			id, ours := byKey[k]
			if !ours || seen[k] || a.Status == "" {
				continue
			}
			seen[k] = true
			updates = append(updates, store.ActionUpdate{ID: id, Status: a.Status})
			d.m.actionUpdates.WithLabelValues(statusLabel(a.Status)).Inc()
		}
		n := len(updates)
		for _, id := range chunk {
			if !seen[strings.ToLower(id)] {
				d.log.Debug("open action not returned by Defender; status left as it is", "action_id", id)
				// Recorded with the status it has, which only moves its
				// last poll time: the least recently polled come first,
				// and actions Defender never returns must not keep the
				// others from being polled.
				updates = append(updates, store.ActionUpdate{ID: id, Status: status[id]})
			}
		}
		if len(updates) == 0 {
			continue
		}
		if err := d.st.UpdateActions(ctx, updates); err != nil {
			d.m.storeErrors.WithLabelValues("update_actions").Inc()
			errs = append(errs, err)
			continue
		}
		reported += n
	}
	return reported, errors.Join(errs...)
}

// statusLabel bounds the label values to the documented statuses.
func statusLabel(s string) string {
	switch s {
	case domain.ActionPending, domain.ActionInProgress, domain.ActionSucceeded,
		domain.ActionFailed, domain.ActionTimeOut, domain.ActionCancelled:
		return s
	}
	return "other"
}
