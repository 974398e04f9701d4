package dispatch

import (
	"container/list"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/scanhook/scanhook/internal/defender"
)

// lookup resolves a DNS name to a machine id through the cache.
//
// A name Defender does not know makes the job dead at once rather than
// retried: Defender lists a device from its first report after onboarding,
// so an alert naming a device Defender has never heard of is about a device
// that is not onboarded, and waiting does not change that. The negative
// entry (5 minutes by default) spares Defender a storm of lookups for the
// same unknown name.
func (d *Dispatcher) lookup(ctx context.Context, name string) (id string, cached bool, err error) {
	if !defender.ValidDNSName(name) {
		return "", false, permanent(fmt.Errorf("device DNS name %q is not a valid computer name", truncate(name, 128)))
	}
	key := cacheKey(name)
	if e, ok := d.res.get(key); ok {
		if e.id == "" {
			d.m.resolves.WithLabelValues("cache_negative").Inc()
			return "", true, permanent(fmt.Errorf("no Defender machine named %q (looked up %s ago)", name, d.now().Sub(e.at).Round(time.Second)))
		}
		d.m.resolves.WithLabelValues("cache_hit").Inc()
		return e.id, true, nil
	}
	m, err := d.def.FindMachineByDNSName(ctx, name)
	switch {
	case err == nil && m != nil && defender.ValidMachineID(m.ID):
		d.m.resolves.WithLabelValues("found").Inc()
		id := strings.ToLower(m.ID)
		d.res.put(key, id)
		return id, false, nil
	case err == nil:
		d.m.resolves.WithLabelValues("error").Inc()
		return "", false, fmt.Errorf("resolve device %q: Defender returned machine id %q, not 40 hex characters", name, m.ID)
	case defender.KindOf(err) == defender.NotFound:
		d.m.resolves.WithLabelValues("not_found").Inc()
		d.res.put(key, "")
		return "", false, permanent(fmt.Errorf("no Defender machine named %q: %w", name, err))
	default:
		d.m.resolves.WithLabelValues("error").Inc()
		return "", false, fmt.Errorf("resolve device %q: %w", name, err)
	}
}

func cacheKey(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// resolveCache remembers DNS name → machine id (or "no such machine") for a
// while, least recently used names evicted first.
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

func (c *resolveCache) put(key, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*cacheEntry)
		e.id, e.at = id, c.now()
		c.ll.MoveToFront(el)
		return
	}
	c.items[key] = c.ll.PushFront(&cacheEntry{key: key, id: id, at: c.now()})
	for c.ll.Len() > c.size {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

func (c *resolveCache) forget(name string) {
	key := cacheKey(name)
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
