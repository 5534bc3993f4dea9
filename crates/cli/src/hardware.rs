//! `synosctl hw`: what the machine is, its tier, a live view of its use, and accelerator
//! leases, from synos-hwaccel.

use std::io::IsTerminal as _;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use synos_proto::hwaccel::v1::hardware_client::HardwareClient;
use synos_proto::hwaccel::v1::{
    Accelerator, GetSystemInfoRequest, GetTierRequest, Lease, ListLeasesRequest, Pressure,
    Utilization, WatchUtilizationRequest,
};

use crate::Cli;
use crate::commands::{CommandResult, Connected, connect};
use crate::output::{bytes, emit, emit_json, enum_value, table, timestamp_text};
use synos_common::exit;

async fn hardware(
    cli: &Cli,
) -> Result<(Connected, HardwareClient<tonic::transport::Channel>), crate::commands::CliError> {
    let connection = connect(cli, "hwaccel").await?;
    let client = HardwareClient::new(connection.channel.clone());
    Ok((connection, client))
}

fn accelerator_json(accelerator: &Accelerator) -> Value {
    json!({
        "id": accelerator.id,
        "kind": enum_value(accelerator.kind().as_str_name(), "ACCELERATOR_KIND_").to_ascii_lowercase(),
        "vendor": accelerator.vendor,
        "model": accelerator.model,
        "driver": accelerator.driver,
        "memory_bytes": accelerator.memory_bytes,
        "device_path": accelerator.device_path,
        "source": accelerator.source,
        "pci_address": accelerator.pci_address,
    })
}

/// "3 cores" or "1.50".
fn cpus(count: f64) -> String {
    if count.fract() == 0.0 {
        format!("{count:.0}")
    } else {
        format!("{count:.2}")
    }
}

/// `synosctl hw info`.
pub(crate) async fn info(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = hardware(cli).await?;
    let info = client
        .get_system_info(GetSystemInfoRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let platform = info.platform.unwrap_or_default();
    let cpu = info.cpu.unwrap_or_default();
    let memory = info.memory.unwrap_or_default();
    let virtualization = info.virtualization.unwrap_or_default();
    let cgroup = info.cgroup.unwrap_or_default();
    let effective = info.effective.unwrap_or_default();
    if as_json {
        emit_json(&json!({
            "platform": {
                "hostname": platform.hostname, "os_name": platform.os_name,
                "kernel_version": platform.kernel_version, "architecture": platform.architecture,
            },
            "cpu": {
                "model": cpu.model, "vendor": cpu.vendor, "logical_cores": cpu.logical_cores,
                "physical_cores": cpu.physical_cores, "features": cpu.features,
            },
            "memory": {
                "total_bytes": memory.total_bytes, "available_bytes": memory.available_bytes,
                "swap_total_bytes": memory.swap_total_bytes, "swap_free_bytes": memory.swap_free_bytes,
            },
            "disks": info.disks.iter().map(|disk| json!({
                "path": disk.path, "purpose": disk.purpose, "total_bytes": disk.total_bytes,
                "available_bytes": disk.available_bytes, "total_inodes": disk.total_inodes,
                "free_inodes": disk.free_inodes,
            })).collect::<Vec<_>>(),
            "accelerators": info.accelerators.iter().map(accelerator_json).collect::<Vec<_>>(),
            "virtualization": { "vm": virtualization.vm, "container": virtualization.container },
            "cgroup": {
                "path": cgroup.path, "memory_max_bytes": cgroup.memory_max_bytes,
                "cpu_max": cgroup.cpu_max,
            },
            "effective": {
                "memory_bytes": effective.memory_bytes, "cpus": effective.cpus,
                "gpus": effective.gpus, "npus": effective.npus,
            },
            "notes": info.notes,
        }));
        return Ok(exit::OK);
    }
    let physical = cpu
        .physical_cores
        .map_or_else(String::new, |cores| format!(", {cores} physical"));
    let features = if cpu.features.is_empty() {
        "none of note".to_owned()
    } else {
        cpu.features.join(" ")
    };
    let mut lines = vec![
        format!(
            "host:        {} ({}, kernel {}, {})",
            platform.hostname, platform.os_name, platform.kernel_version, platform.architecture
        ),
        format!(
            "cpu:         {} ({} logical{physical})",
            cpu.model, cpu.logical_cores
        ),
        format!("features:    {features}"),
        format!(
            "memory:      {} available of {}",
            bytes(memory.available_bytes),
            bytes(memory.total_bytes)
        ),
        format!(
            "swap:        {} free of {}",
            bytes(memory.swap_free_bytes),
            bytes(memory.swap_total_bytes)
        ),
        format!(
            "virtual:     {} (container: {})",
            virtualization.vm, virtualization.container
        ),
    ];
    let mut limits = Vec::new();
    if let Some(limit) = cgroup.memory_max_bytes {
        limits.push(format!("memory.max {}", bytes(limit)));
    }
    if let Some(quota) = cgroup.cpu_max {
        limits.push(format!("cpu.max {quota:.2} CPUs"));
    }
    lines.push(format!(
        "cgroup:      {} ({})",
        if cgroup.path.is_empty() {
            "unknown"
        } else {
            &cgroup.path
        },
        if limits.is_empty() {
            "no limits".to_owned()
        } else {
            limits.join(", ")
        }
    ));
    lines.push(format!(
        "effective:   {} CPUs, {}",
        cpus(effective.cpus),
        bytes(effective.memory_bytes)
    ));
    for disk in &info.disks {
        lines.push(format!(
            "disk:        {} ({}): {} free of {}, {} inodes free",
            disk.path,
            disk.purpose,
            bytes(disk.available_bytes),
            bytes(disk.total_bytes),
            disk.free_inodes
        ));
    }
    if info.accelerators.is_empty() {
        lines.push("accelerators: none found".to_owned());
    }
    for accelerator in &info.accelerators {
        let memory = accelerator
            .memory_bytes
            .map_or_else(|| "memory unknown".to_owned(), bytes);
        lines.push(format!(
            "{:<12} {} {} ({}, {memory}, {}, via {})",
            format!("{}:", accelerator.id),
            accelerator.vendor,
            accelerator.model,
            if accelerator.driver.is_empty() {
                "no driver"
            } else {
                &accelerator.driver
            },
            if accelerator.device_path.is_empty() {
                &accelerator.pci_address
            } else {
                &accelerator.device_path
            },
            accelerator.source
        ));
    }
    for note in &info.notes {
        lines.push(format!("note:        {note}"));
    }
    emit(&lines.join("\n"));
    Ok(exit::OK)
}

/// `synosctl hw tier`.
pub(crate) async fn tier(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = hardware(cli).await?;
    let answer = client
        .get_tier(GetTierRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let name = enum_value(answer.tier().as_str_name(), "TIER_").to_ascii_lowercase();
    if as_json {
        let effective = answer.effective.unwrap_or_default();
        emit_json(&json!({
            "tier": name,
            "reasons": answer.reasons,
            "effective": {
                "memory_bytes": effective.memory_bytes, "cpus": effective.cpus,
                "gpus": effective.gpus, "npus": effective.npus,
            },
        }));
    } else {
        let mut lines = vec![name];
        lines.extend(answer.reasons.iter().map(|reason| format!("  {reason}")));
        emit(&lines.join("\n"));
    }
    Ok(exit::OK)
}

fn pressure(label: &str, pressure: Option<&Pressure>) -> Option<String> {
    let pressure = pressure?;
    Some(match pressure.full_avg10 {
        Some(full) => format!("{label} {:.1}/{full:.1}", pressure.some_avg10),
        None => format!("{label} {:.1}", pressure.some_avg10),
    })
}

/// One screen (or, when not on a terminal, one block) of `hw top`.
fn render(sample: &Utilization) -> String {
    let time = timestamp_text(sample.sampled_at.as_ref());
    let load = sample.load.unwrap_or_default();
    let mut lines = vec![
        format!(
            "{time}  sample {}  every {:.1} s",
            sample.sequence, sample.interval_seconds
        ),
        format!(
            "cpu     {:5.1} %   load {:.2} {:.2} {:.2}",
            sample.cpu_percent, load.one, load.five, load.fifteen
        ),
        format!(
            "memory  {} of {}   swap {} used",
            bytes(sample.memory_used_bytes),
            bytes(sample.memory_total_bytes),
            bytes(sample.swap_used_bytes)
        ),
    ];
    let pressures: Vec<String> = [
        pressure("cpu", sample.cpu_pressure.as_ref()),
        pressure("memory", sample.memory_pressure.as_ref()),
        pressure("io", sample.io_pressure.as_ref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !pressures.is_empty() {
        lines.push(format!(
            "stall % (some/full over 10 s): {}",
            pressures.join("  ")
        ));
    }
    for disk in &sample.disks {
        lines.push(format!(
            "disk    {} of {}   {}",
            bytes(disk.used_bytes),
            bytes(disk.total_bytes),
            disk.path
        ));
    }
    let unknown = || "-".to_owned();
    let rows: Vec<Vec<String>> = sample
        .accelerators
        .iter()
        .map(|accelerator| {
            vec![
                accelerator.id.clone(),
                accelerator
                    .utilization_percent
                    .map_or_else(unknown, |percent| format!("{percent:.0} %")),
                match (
                    accelerator.memory_used_bytes,
                    accelerator.memory_total_bytes,
                ) {
                    (Some(used), Some(total)) => format!("{} of {}", bytes(used), bytes(total)),
                    (None, Some(total)) => format!("? of {}", bytes(total)),
                    _ => unknown(),
                },
                accelerator
                    .temperature_celsius
                    .map_or_else(unknown, |celsius| format!("{celsius:.0} °C")),
                accelerator
                    .power_watts
                    .map_or_else(unknown, |watts| format!("{watts:.0} W")),
            ]
        })
        .collect();
    if !rows.is_empty() {
        lines.push(table(&["ACCEL", "BUSY", "MEMORY", "TEMP", "POWER"], &rows));
    }
    lines.join("\n")
}

/// `synosctl hw top`: a live view until interrupted, or `count` samples.
pub(crate) async fn top(cli: &Cli, count: Option<u64>, as_json: bool) -> CommandResult {
    let (connection, mut client) = hardware(cli).await?;
    let mut samples = client
        .watch_utilization(WatchUtilizationRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let redraw = !as_json && std::io::stdout().is_terminal();
    let mut shown = 0_u64;
    while count.is_none_or(|count| shown < count) {
        let Some(sample) = samples.next().await else {
            return Err(crate::commands::CliError::failure(
                "synos-hwaccel ended the stream (was it stopped?)",
            ));
        };
        let sample = sample.map_err(|status| connection.call_failed(&status))?;
        if as_json {
            // One object per line, for scripts that follow the stream.
            emit(&utilization_json(&sample).to_string());
        } else if redraw {
            // Home the cursor and clear the screen, as top does.
            emit(&format!("\x1b[H\x1b[2J{}", render(&sample)));
        } else {
            emit(&format!("{}\n", render(&sample)));
        }
        shown += 1;
    }
    Ok(exit::OK)
}

fn utilization_json(sample: &Utilization) -> Value {
    let pressure = |pressure: Option<&Pressure>| {
        pressure.map(|pressure| json!({ "some_avg10": pressure.some_avg10, "full_avg10": pressure.full_avg10 }))
    };
    let load = sample.load.unwrap_or_default();
    json!({
        "sampled_at": timestamp_text(sample.sampled_at.as_ref()),
        "sequence": sample.sequence,
        "cpu_percent": sample.cpu_percent,
        "memory_used_bytes": sample.memory_used_bytes,
        "memory_total_bytes": sample.memory_total_bytes,
        "swap_used_bytes": sample.swap_used_bytes,
        "load": [load.one, load.five, load.fifteen],
        "cpu_pressure": pressure(sample.cpu_pressure.as_ref()),
        "memory_pressure": pressure(sample.memory_pressure.as_ref()),
        "io_pressure": pressure(sample.io_pressure.as_ref()),
        "disks": sample.disks.iter().map(|disk| json!({
            "path": disk.path, "used_bytes": disk.used_bytes, "total_bytes": disk.total_bytes,
        })).collect::<Vec<_>>(),
        "accelerators": sample.accelerators.iter().map(|accelerator| json!({
            "id": accelerator.id,
            "utilization_percent": accelerator.utilization_percent,
            "memory_used_bytes": accelerator.memory_used_bytes,
            "memory_total_bytes": accelerator.memory_total_bytes,
            "temperature_celsius": accelerator.temperature_celsius,
            "power_watts": accelerator.power_watts,
        })).collect::<Vec<_>>(),
        "interval_seconds": sample.interval_seconds,
    })
}

fn lease_json(lease: &Lease) -> Value {
    json!({
        "id": lease.id,
        "accelerator_id": lease.accelerator_id,
        "holder": lease.holder,
        "memory_bytes": lease.memory_bytes,
        "acquired_at": timestamp_text(lease.acquired_at.as_ref()),
        "expires_at": timestamp_text(lease.expires_at.as_ref()),
    })
}

/// `synosctl hw leases`.
pub(crate) async fn leases(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = hardware(cli).await?;
    let leases = client
        .list_leases(ListLeasesRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner()
        .leases;
    if as_json {
        emit_json(&Value::Array(leases.iter().map(lease_json).collect()));
    } else if leases.is_empty() {
        emit("no leases");
    } else {
        let rows: Vec<Vec<String>> = leases
            .iter()
            .map(|lease| {
                vec![
                    lease.id.clone(),
                    lease.accelerator_id.clone(),
                    lease.holder.clone(),
                    if lease.memory_bytes == 0 {
                        "whole device".to_owned()
                    } else {
                        bytes(lease.memory_bytes)
                    },
                    timestamp_text(lease.expires_at.as_ref()),
                ]
            })
            .collect();
        emit(&table(
            &["LEASE", "ACCEL", "HOLDER", "MEMORY", "EXPIRES"],
            &rows,
        ));
    }
    Ok(exit::OK)
}
