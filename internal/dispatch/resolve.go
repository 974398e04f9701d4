package dispatch

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/store"
)

// noMachineError says a lookup found no machine (or could not be made with
// the value given): the device may still be found by another of its names.
type noMachineError struct{ err error }

func (e noMachineError) Error() string { return e.err.Error() }
func (e noMachineError) Unwrap() error { return e.err }

func noMachine(err error) error { return permanent(noMachineError{err}) }

func isNoMachine(err error) bool {
	var nm noMachineError
	return errors.As(err, &nm)
}

// resolveDevice looks up a device that has no valid machine id: by DNS
// name, then, when the name finds nothing or there is none, by Entra ID
// device id; a device named only by an internal IP, by findbyip at ipAt
// (lookupIP). cached reports that the id came from the cache, so that a scan
// answered 404 can forget it.
//
// A device Defender does not know makes the job dead at once rather than
// retried: Defender lists a device from its first report after onboarding,
// so an alert naming a device Defender has never heard of is about a device
// that is not onboarded, and waiting does not change that.
func (d *Dispatcher) resolveDevice(ctx context.Context, dev alert.Device, ipAt time.Time) (id string, cached bool, err error) {
	name, aad := dev.DNSName, dev.AADDeviceID
	if name == "" && aad == "" && dev.ID == "" && dev.IP != "" {
		return d.lookupIP(ctx, dev.IP, ipAt)
	}
	var nameErr error
	if name != "" {
		id, cached, err := d.lookup(ctx, name)
		if err == nil || aad == "" || !isNoMachine(err) {
			return id, cached, err
		}
		nameErr = err
	}
	if aad == "" {
		if dev.ID != "" {
			return "", false, permanent(fmt.Errorf("device id %q is not a Defender machine id and the alert gives no DNS name or AAD device id", truncate(dev.ID, 128)))
		}
		return "", false, permanent(errors.New("the device has no Defender machine id, DNS name or AAD device id to look it up by"))
	}
	id, cached, err = d.lookupAAD(ctx, aad)
	switch {
	case err == nil || !isNoMachine(err):
		return id, cached, err
	case nameErr != nil:
		return "", false, noMachine(fmt.Errorf("%v; %w", nameErr, err))
	case dev.ID != "":
		return "", false, noMachine(fmt.Errorf("%w (device id %q is not a Defender machine id and the alert gives no DNS name)", err, truncate(dev.ID, 128)))
	default:
		return "", false, noMachine(fmt.Errorf("%w (the device has no Defender machine id or DNS name)", err))
	}
}

// lookup resolves a DNS name or a bare computer name to a machine id
// through the cache (FindMachineByComputerName says how names are looked up).
//
// The negative entry (5 minutes by default) spares Defender a storm of
// lookups for the same unknown name.
func (d *Dispatcher) lookup(ctx context.Context, name string) (id string, cached bool, err error) {
	if !defender.ValidDNSName(name) {
		return "", false, noMachine(fmt.Errorf("device DNS name %q is not a valid computer name", truncate(name, 128)))
	}
	key := cacheKey(name)
	if id, ok, err := d.fromCache(ctx, key, fmt.Sprintf("no Defender machine named %q", name)); ok {
		return id, true, err
	}
	m, err := d.def.FindMachineByComputerName(ctx, name)
	return d.settle(key, m, err, func(err error) error {
		return fmt.Errorf("no Defender machine named %q: %w", name, err)
	}, func(err error) error {
		return fmt.Errorf("resolve device %q: %w", name, err)
	})
}

// lookupAAD resolves an Entra ID (Azure AD) device id to a machine id
// through the cache, in its own key space.
func (d *Dispatcher) lookupAAD(ctx context.Context, aad string) (id string, cached bool, err error) {
	key := aadCacheKey(aad)
	if id, ok, err := d.fromCache(ctx, key, fmt.Sprintf("no Defender machine with AAD device id %q", aad)); ok {
		return id, true, err
	}
	m, err := d.def.FindMachineByAADDeviceID(ctx, aad)
	if defender.KindOf(err) == defender.Invalid {
		// Checked before sending: a value that is no GUID finds nothing.
		d.m.resolves.WithLabelValues("error").Inc()
		return "", false, noMachine(fmt.Errorf("AAD device id %q cannot be looked up: %w", truncate(aad, 64), err))
	}
	return d.settle(key, m, err, func(err error) error {
		return fmt.Errorf("no Defender machine with AAD device id %q: %w", aad, err)
	}, func(err error) error {
		return fmt.Errorf("resolve AAD device id %q: %w", aad, err)
	})
}

// lookupIP resolves a device named only by an internal IP address with
// Defender's findbyip, at the time the alert saw it: scanned only when
// exactly one machine was seen with the address within 15 minutes of it.
// Answers are cached per 15-minute slot of that time.
func (d *Dispatcher) lookupIP(ctx context.Context, ip string, at time.Time) (id string, cached bool, err error) {
	if at.IsZero() {
		at = d.now()
	}
	at = at.UTC().Truncate(time.Second)
	key := ipCacheKey(ip, at)
	notFound := fmt.Sprintf("IP %s matched no Defender machine within 15 minutes of %s: not scanned", ip, at.Format(time.RFC3339))
	if id, ok, err := d.fromCache(ctx, key, notFound); ok {
		return id, true, err
	}
	ms, err := d.def.FindMachinesByIP(ctx, ip, at)
	switch {
	case defender.KindOf(err) == defender.Invalid:
		d.m.resolves.WithLabelValues("error").Inc()
		return "", false, noMachine(fmt.Errorf("IP %q cannot be looked up: %w", truncate(ip, 64), err))
	case err != nil:
		d.m.resolves.WithLabelValues("error").Inc()
		return "", false, fmt.Errorf("resolve IP %s: %w", ip, err)
	case len(ms) == 0:
		d.m.resolves.WithLabelValues("not_found").Inc()
		d.res.put(key, "")
		return "", false, noMachine(errors.New(notFound))
	case len(ms) > 1:
		d.m.resolves.WithLabelValues("ambiguous").Inc()
		ids := make([]string, 0, len(ms))
		for _, m := range ms {
			ids = append(ids, truncate(m.ID, 40))
		}
		return "", false, permanent(fmt.Errorf("IP %s matched %d machines at %s: not scanned (machines %s)",
			ip, len(ms), at.Format(time.RFC3339), truncate(strings.Join(ids, ", "), 400)))
	}
	return d.settle(key, &ms[0], nil, nil, func(err error) error {
		return fmt.Errorf("resolve IP %s: %w", ip, err)
	})
}

// ipCacheKey is an IP address in the 15-minute slot of the time it was
// seen: the same address may be another machine at another time.
func ipCacheKey(ip string, at time.Time) string {
	return "ip:" + ip + "@" + at.UTC().Truncate(defender.FindByIPWindow).Format(time.RFC3339)
}

// fromCache answers a lookup from the cache when it can (ok): the machine
// id, or, for a name remembered as unknown, an error saying notFound. The
// in-memory cache is asked first, then the names the store shares between
// replicas (positive answers only, while younger than ResolveTTL).
func (d *Dispatcher) fromCache(ctx context.Context, key, notFound string) (id string, ok bool, err error) {
	e, ok := d.res.get(key)
	if !ok {
		id, ok := d.fromStore(ctx, key)
		return id, ok, nil
	}
	if e.id == "" {
		d.m.resolves.WithLabelValues("cache_negative").Inc()
		return "", true, noMachine(fmt.Errorf("%s (looked up %s ago)", notFound, d.now().Sub(e.at).Round(time.Second)))
	}
	d.m.resolves.WithLabelValues("cache_hit").Inc()
	return e.id, true, nil
}

// fromStore answers a lookup from the names the store shares (ok), and
// keeps the answer in the in-memory cache with the age it has. A store that
// cannot answer is a cache miss: Defender is asked instead.
func (d *Dispatcher) fromStore(ctx context.Context, key string) (string, bool) {
	id, at, ok, err := d.st.MachineByName(ctx, storeName(key), d.opts.ResolveTTL)
	if err != nil {
		d.m.storeErrors.WithLabelValues("machine_name").Inc()
		d.log.Warn("could not read a shared resolved name", "name", key, "error", err.Error())
		return "", false
	}
	if !ok || !defender.ValidMachineID(id) {
		return "", false
	}
	d.res.putAt(key, id, at)
	d.m.resolves.WithLabelValues("store_hit").Inc()
	return id, true
}

// settle counts, caches and words the answer of one lookup.
func (d *Dispatcher) settle(key string, m *defender.Machine, err error, notFound, failed func(error) error) (string, bool, error) {
	switch {
	case err == nil && m != nil && defender.ValidMachineID(m.ID):
		d.m.resolves.WithLabelValues("found").Inc()
		id := strings.ToLower(m.ID)
		d.res.put(key, id)
		d.remember(key, id)
		return id, false, nil
	case err == nil:
		d.m.resolves.WithLabelValues("error").Inc()
		id := ""
		if m != nil {
			id = m.ID
		}
		return "", false, failed(fmt.Errorf("Defender returned machine id %q, not 40 hex characters", truncate(id, 64)))
	case defender.KindOf(err) == defender.NotFound:
		d.m.resolves.WithLabelValues("not_found").Inc()
		d.res.put(key, "")
		return "", false, noMachine(notFound(err))
	default:
		d.m.resolves.WithLabelValues("error").Inc()
		return "", false, failed(err)
	}
}

// remember shares a resolved name with the other replicas through the
// store; an empty id forgets it. Failing only costs a later lookup.
func (d *Dispatcher) remember(key, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.st.RememberMachineName(ctx, storeName(key), id); err != nil {
		d.m.storeErrors.WithLabelValues("machine_name").Inc()
		d.log.Warn("could not share a resolved name", "name", key, "error", err.Error())
	}
}

// forgetDevice drops what the caches hold for a device's names, for a
// machine id Defender no longer knows.
func (d *Dispatcher) forgetDevice(j store.Job) {
	dev := j.Device
	if dev.DNSName != "" {
		d.res.forget(dev.DNSName)
		d.remember(cacheKey(dev.DNSName), "")
	}
	if dev.AADDeviceID != "" {
		d.res.forgetKey(aadCacheKey(dev.AADDeviceID))
		d.remember(aadCacheKey(dev.AADDeviceID), "")
	}
	if dev.IP != "" && dev.DNSName == "" && dev.AADDeviceID == "" {
		key := ipCacheKey(dev.IP, j.IPSeenAt)
		d.res.forgetKey(key)
		d.remember(key, "")
	}
}

func cacheKey(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// storeName is a cache key as the store's machine_names spells it: DNS and
// bare computer names get "dns:", the other key spaces have their prefix.
func storeName(key string) string {
	if strings.HasPrefix(key, "aad:") || strings.HasPrefix(key, "ip:") {
		return key
	}
	return "dns:" + key
}

// aadCacheKey keeps Entra ID device ids apart from DNS names, which can
// never contain ':'.
func aadCacheKey(aad string) string { return "aad:" + strings.ToLower(aad) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// resolveCache remembers DNS name or "aad:"+AAD device id → machine id (or
// "no such machine") for a while, least recently used keys evicted first.
type resolveCache struct {
	size        int
	ttl, negTTL time.Duration
	now         func() time.Time

	mu    sync.Mutex
	ll    *list.List // front: most recently used; values *cacheEntry
	items map[string]*list.Element
}

type cacheEntry struct {
	key string
	id  string // "" : no such machine
	at  time.Time
}

func newResolveCache(size int, ttl, negTTL time.Duration, now func() time.Time) *resolveCache {
	return &resolveCache{size: size, ttl: ttl, negTTL: negTTL, now: now, ll: list.New(), items: map[string]*list.Element{}}
}

func (c *resolveCache) get(key string) (cacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return cacheEntry{}, false
	}
	e := el.Value.(*cacheEntry)
	ttl := c.ttl
	if e.id == "" {
		ttl = c.negTTL
	}
	if c.now().Sub(e.at) >= ttl {
		c.ll.Remove(el)
		delete(c.items, key)
		return cacheEntry{}, false
	}
	c.ll.MoveToFront(el)
	return *e, true
}

func (c *resolveCache) put(key, id string) { c.putAt(key, id, c.now()) }

// putAt remembers key as resolved at a time (a name the store shared keeps
// the age it had there).
func (c *resolveCache) putAt(key, id string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*cacheEntry)
		e.id, e.at = id, at
		c.ll.MoveToFront(el)
		return
	}
	c.items[key] = c.ll.PushFront(&cacheEntry{key: key, id: id, at: at})
	for c.ll.Len() > c.size {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

func (c *resolveCache) forget(name string) { c.forgetKey(cacheKey(name)) }

func (c *resolveCache) forgetKey(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.ll.Remove(el)
		delete(c.items, key)
	}
}

func (c *resolveCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
