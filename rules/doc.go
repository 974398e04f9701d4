package rules

// The rule file format, in short (examples/rules.yaml is a commented file
// to start from):
//
//	defaults:
//	  cooldown: 6h          # Go duration or days ("1d12h"); DefaultCooldown when absent
//	  comment: "..."        # text/template; DefaultComment when absent
//	  dry_run: false
//	rules:                  # tried in order per device; the first match wins
//	  - name: ransomware-full        # required, unique (case-insensitively)
//	    match:                       # every key must hold
//	      severity: {gte: high}      # gte/lte: severity only
//	      category: [Ransomware, Malware]   # a list: any of; strings compare case-insensitively
//	      title: {regex: "(?i)ransom"}      # RE2, compiled at load
//	      device.dns_name: {glob: "*.corp.example"}   # * ? [a-z] [!a], whole value, case-insensitive
//	      tags: {not: test}          # not: negates any condition
//	      raw.properties.severity: High      # a path into the alert as sent
//	    when: 'alert.severity_rank >= severity_rank("high")'   # CEL, ANDed with match
//	    scan: Full                   # Quick | Full | none, exactly
//	    comment: "..."               # optional
//	    cooldown: 12h                # optional
//	    dry_run: true                # optional
//
// Matchable fields: source, severity, title, category, detection_source,
// threat_family, status, mitre_techniques, tags, tenant_id,
// device.dns_name, device.id, raw.<path>. On list fields (mitre_techniques,
// tags, and raw paths that cross arrays) a condition holds when any
// element satisfies it, and {not: c} holds when no element satisfies c.
// raw.<path> walks objects by key; on an array a numeric segment indexes
// it and any other segment is applied to every element; numbers and
// booleans compare by their JSON text.
//
// In `when`, `alert` has the fields id, source, severity, severity_rank,
// title, description, category, detection_source, threat_family, status,
// mitre_techniques, tags, tenant_id, url and devices, and `device` has id,
// dns_name and aad_device_id (the device being decided). severity_rank is
// informational 0, low 1, medium 2, high 3, critical 4 (-1 when the
// source's severity was not recognized); the function severity_rank(name)
// gives the rank of a severity name, so `alert.severity_rank >=
// severity_rank("medium")` reads as "medium or worse". The CEL string
// extensions (lowerAscii, upperAscii, split, replace, …) are available. An
// expression must return bool, is type-checked at load, and is refused
// when its estimated worst case is too costly (a loop nested in a loop over
// alert lists). An expression that fails at evaluation (an index out of
// range) does not match, and the decision's reason says so.
//
// Comments are Go text/template with .Rule, .Alert (alert.Alert) and
// .Device (alert.Device). Each template is run once at load against a
// sample alert, so a misspelt field is a load error. The output has control
// and bidi characters removed, runs of white space collapsed, and is capped
// at Options.MaxCommentLen runes (cut text ends with "…"). A template that
// fails or renders empty for a particular alert falls back to
// DefaultComment, since Defender requires a comment.
