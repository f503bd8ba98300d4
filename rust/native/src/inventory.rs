//! The inventory converter's Python face (`metal3.inspection` wraps it): an inventory as JSON
//! text or as a parsed document in, `status.hardware` as Python dicts out, `InventoryError` for
//! a malformed inventory. The rules are the `metal3-inventory` crate's.
//!
//! The conversion holds the GIL: it is short (a few hundred microseconds for a 64 KiB inventory
//! of a large server, building its result included), well under Python's 5 ms switch interval.

use std::borrow::Cow;

use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use metal3_inventory::model::{
    Boot, Cpu, Disk, Field, Firmware, Found, Int, Interface, Inventory, Item, Memory, SystemVendor,
    Text, Tlv, TlvType,
};
use metal3_inventory::output::{self as out, Clock, HardwareDetails, Nic, Storage};
use metal3_inventory::{hardware_details, Error, Problem};

create_exception!(
    metal3._native,
    InventoryError,
    PyValueError,
    "An inventory that is not of ironic-python-agent's shape. `path` is where (a JSON path \
     such as `.interfaces[2].lldp[0]`, empty for the document) and `message` what is wrong; \
     `str()` gives both."
);

/// Adds the inventory converter to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("InventoryError", m.py().get_type::<InventoryError>())?;
    m.add_function(wrap_pyfunction!(hardware_details_from_json, m)?)?;
    m.add_function(wrap_pyfunction!(hardware_details_from_document, m)?)?;
    Ok(())
}

/// `status.hardware` for an inventory's JSON text (bytes or str), parsed and checked in one
/// pass; `InventoryError` if it is not JSON or not an inventory.
#[pyfunction]
fn hardware_details_from_json<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let text = if let Ok(bytes) = raw.cast::<PyBytes>() {
        bytes.as_bytes()
    } else if let Ok(text) = raw.cast::<PyString>() {
        match text.to_str() {
            Ok(text) => text.as_bytes(),
            Err(_) => {
                // The words orjson uses for a str it cannot read.
                let reason = "str is not valid UTF-8: surrogates not allowed".to_owned();
                return Err(inventory_error(
                    py,
                    &Error::new("", Problem::NotJson(reason)),
                ));
            }
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "an inventory's JSON text is bytes or str, not {}",
            raw.get_type().name()?
        )));
    };
    let inventory = metal3_inventory::parse(text).map_err(|e| inventory_error(py, &e))?;
    let details = hardware_details(&inventory).map_err(|e| inventory_error(py, &e))?;
    to_python(py, &details)
}

/// `status.hardware` for a parsed inventory (a dict of JSON values, as a JSON parser gives);
/// `InventoryError` if it is not an inventory. Values no JSON parser makes are refused as being
/// of the wrong type: other types (a tuple where an array belongs), integers beyond 64 bits,
/// strings with lone surrogates.
#[pyfunction]
fn hardware_details_from_document<'py>(
    py: Python<'py>,
    document: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let inventory = match Inventory::from_py(document)? {
        Ok(inventory) => inventory,
        Err(found) => {
            let problem = Problem::WrongType(metal3_inventory::model::Expected::Object, found);
            return Err(inventory_error(py, &Error::new("", problem)));
        }
    };
    let details = hardware_details(&inventory).map_err(|e| inventory_error(py, &e))?;
    to_python(py, &details)
}

/// The `InventoryError` for a refusal, with `path` and `message` set.
fn inventory_error(py: Python<'_>, error: &Error) -> PyErr {
    let message = match &error.problem {
        // The value as Python writes it (repr), as the message always showed it.
        Problem::NotAMac(value) => match PyString::new(py, value).repr() {
            Ok(repr) => format!("{repr} is not a MAC address"),
            Err(err) => return err,
        },
        problem => problem.to_string(),
    };
    let err = InventoryError::new_err(format!("inventory{}: {message}", error.path));
    let instance = err.value(py);
    let attributes = instance
        .setattr(intern!(py, "path"), &error.path)
        .and_then(|()| instance.setattr(intern!(py, "message"), message));
    match attributes {
        Ok(()) => err,
        Err(failed) => failed,
    }
}

// --- output: the dicts baremetal-operator's JSON decodes to -----------------------------------

fn to_python<'py>(py: Python<'py>, hw: &HardwareDetails<'_>) -> PyResult<Bound<'py, PyDict>> {
    // Sharing pays once several NICs see the same switches; a small host's few strings are
    // quicker made than looked up.
    let share = hw.nics.len() > SHARE_FROM_NICS;
    Builder {
        py,
        shared: Vec::with_capacity(if share { SHARED_MAX } else { 0 }),
        share,
    }
    .details(hw)
}

/// How many distinct repeating strings a result shares, at most (a host's NICs see one or two
/// switches with a few VLANs; its disks are of a few models).
const SHARED_MAX: usize = 32;

/// Strings are shared in results with more NIC entries than this.
const SHARE_FROM_NICS: usize = 4;

/// Builds the result's objects. Strings that repeat across NICs and disks (what the switches
/// said, VLAN names, models, vendors) are made once per result and shared, as str is immutable.
struct Builder<'py, 'o> {
    py: Python<'py>,
    /// The first `SHARED_MAX` distinct such strings (a few: a list is quicker than hashing).
    shared: Vec<(&'o str, Bound<'py, PyString>)>,
    share: bool,
}

impl<'py, 'o> Builder<'py, 'o> {
    /// The str for a text that likely repeats within the result.
    fn shared(&mut self, text: &'o str) -> Bound<'py, PyString> {
        if !self.share {
            return PyString::new(self.py, text);
        }
        if let Some((_, made)) = self.shared.iter().find(|(known, _)| *known == text) {
            return made.clone();
        }
        let made = PyString::new(self.py, text);
        if self.shared.len() < SHARED_MAX {
            self.shared.push((text, made.clone()));
        }
        made
    }

    fn put_shared(
        &mut self,
        dict: &Bound<'py, PyDict>,
        key: &Bound<'py, PyString>,
        value: Option<&'o str>,
    ) -> PyResult<()> {
        match value {
            Some(text) => dict.set_item(key, self.shared(text)),
            None => Ok(()),
        }
    }

    fn details(&mut self, hw: &'o HardwareDetails<'_>) -> PyResult<Bound<'py, PyDict>> {
        let py = self.py;
        let details = PyDict::new(py);

        let vendor = PyDict::new(py);
        let v = &hw.system_vendor;
        put(&vendor, intern!(py, "manufacturer"), v.manufacturer)?;
        put(&vendor, intern!(py, "productName"), v.product_name)?;
        put(&vendor, intern!(py, "serialNumber"), v.serial_number)?;
        details.set_item(intern!(py, "systemVendor"), vendor)?;

        let bios = PyDict::new(py);
        put(&bios, intern!(py, "date"), hw.firmware.date)?;
        put(&bios, intern!(py, "vendor"), hw.firmware.vendor)?;
        put(&bios, intern!(py, "version"), hw.firmware.version)?;
        let firmware = PyDict::new(py);
        firmware.set_item(intern!(py, "bios"), bios)?;
        details.set_item(intern!(py, "firmware"), firmware)?;

        if let Some(ram) = hw.ram_mebibytes {
            details.set_item(intern!(py, "ramMebibytes"), int(py, ram)?)?;
        }
        let nics = PyList::empty(py);
        for nic in &hw.nics {
            let entry = self.nic(nic)?;
            nics.append(&entry)?;
            if let Some(ipv6) = nic.dual_stack_ipv6 {
                nics.append(twin(&entry, ipv6)?)?;
            }
        }
        details.set_item(intern!(py, "nics"), nics)?;
        if let Some(storage) = &hw.storage {
            let disks = PyList::empty(py);
            for disk in storage {
                disks.append(self.disk(disk)?)?;
            }
            details.set_item(intern!(py, "storage"), disks)?;
        }
        details.set_item(intern!(py, "cpu"), cpu(py, &hw.cpu)?)?;
        put(&details, intern!(py, "hostname"), hw.hostname)?;
        Ok(details)
    }

    fn nic(&mut self, nic: &'o Nic<'_>) -> PyResult<Bound<'py, PyDict>> {
        let py = self.py;
        let d = PyDict::new(py);
        put(&d, intern!(py, "name"), nic.name)?;
        self.put_shared(&d, intern!(py, "model"), nic.model.as_deref())?;
        put(&d, intern!(py, "mac"), nic.mac)?;
        put(&d, intern!(py, "ip"), nic.ip)?;
        if let Some(gbps) = nic.speed_gbps {
            d.set_item(intern!(py, "speedGbps"), int(py, gbps)?)?;
        }
        if let Some(vlans) = &nic.vlans {
            let list = PyList::empty(py);
            for vlan in vlans {
                let v = PyDict::new(py);
                put(&v, intern!(py, "id"), vlan.id)?;
                self.put_shared(&v, intern!(py, "name"), vlan.name.as_deref())?;
                list.append(v)?;
            }
            d.set_item(intern!(py, "vlans"), list)?;
        }
        put(&d, intern!(py, "vlanId"), nic.vlan_id)?;
        if nic.pxe {
            d.set_item(intern!(py, "pxe"), true)?;
        }
        if let Some(lldp) = &nic.lldp {
            let l = PyDict::new(py);
            self.put_shared(&l, intern!(py, "switchID"), lldp.switch_id.as_deref())?;
            // Port IDs differ from NIC to NIC: not shared.
            put(&l, intern!(py, "portID"), lldp.port_id.as_deref())?;
            let name = lldp.switch_system_name.as_deref();
            self.put_shared(&l, intern!(py, "switchSystemName"), name)?;
            d.set_item(intern!(py, "lldp"), l)?;
        }
        put(&d, intern!(py, "pciAddress"), nic.pci_address)?;
        Ok(d)
    }

    fn disk(&mut self, disk: &'o Storage<'_>) -> PyResult<Bound<'py, PyDict>> {
        let py = self.py;
        let d = PyDict::new(py);
        put(&d, intern!(py, "name"), disk.name)?;
        d.set_item(
            intern!(py, "alternateNames"),
            PyList::new(py, disk.alternate_names())?,
        )?;
        if disk.rotational {
            d.set_item(intern!(py, "rotational"), true)?;
        }
        d.set_item(intern!(py, "type"), disk_type(py, disk.disk_type))?;
        if let Some(size) = disk.size_bytes {
            d.set_item(intern!(py, "sizeBytes"), int(py, size)?)?;
        }
        self.put_shared(&d, intern!(py, "vendor"), disk.vendor)?;
        self.put_shared(&d, intern!(py, "model"), disk.model)?;
        put(&d, intern!(py, "serialNumber"), disk.serial_number)?;
        put(&d, intern!(py, "wwn"), disk.wwn)?;
        put(
            &d,
            intern!(py, "wwnVendorExtension"),
            disk.wwn_vendor_extension,
        )?;
        put(&d, intern!(py, "wwnWithExtension"), disk.wwn_with_extension)?;
        put(&d, intern!(py, "hctl"), disk.hctl)?;
        Ok(d)
    }
}

/// The second entry of a dual-stack NIC: a copy of the first with the IPv6 address, sharing
/// nothing mutable with it (its `vlans` and `lldp` are copied too).
fn twin<'py>(first: &Bound<'py, PyDict>, ipv6: &str) -> PyResult<Bound<'py, PyDict>> {
    let py = first.py();
    let second = first.copy()?;
    second.set_item(intern!(py, "ip"), ipv6)?;
    if let Some(vlans) = first.get_item(intern!(py, "vlans"))? {
        let copies = PyList::empty(py);
        for vlan in vlans.cast::<PyList>()?.iter() {
            copies.append(vlan.cast::<PyDict>()?.copy()?)?;
        }
        second.set_item(intern!(py, "vlans"), copies)?;
    }
    if let Some(lldp) = first.get_item(intern!(py, "lldp"))? {
        second.set_item(intern!(py, "lldp"), lldp.cast::<PyDict>()?.copy()?)?;
    }
    Ok(second)
}

/// Sets `key` when there is a value (Go leaves out empty fields).
fn put<'py, V: IntoPyObject<'py>>(
    dict: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    value: Option<V>,
) -> PyResult<()> {
    match value {
        Some(value) => dict.set_item(key, value),
        None => Ok(()),
    }
}

/// An integer of the inventory (64-bit signed or unsigned, so one of the two conversions fits).
fn int(py: Python<'_>, value: Int) -> PyResult<Bound<'_, PyAny>> {
    match i64::try_from(value) {
        Ok(small) => Ok(small.into_pyobject(py)?.into_any()),
        Err(_) => Ok(u64::try_from(value)
            .map_err(|_| PyValueError::new_err("integer beyond 64 bits"))?
            .into_pyobject(py)?
            .into_any()),
    }
}

fn disk_type(py: Python<'_>, disk_type: out::DiskType) -> &Bound<'_, PyString> {
    match disk_type {
        out::DiskType::Hdd => intern!(py, "HDD"),
        out::DiskType::Ssd => intern!(py, "SSD"),
        out::DiskType::Nvme => intern!(py, "NVME"),
    }
}

fn cpu<'py>(py: Python<'py>, cpu: &out::Cpu<'_>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    put(&d, intern!(py, "arch"), cpu.arch)?;
    put(&d, intern!(py, "model"), cpu.model)?;
    match cpu.clock_megahertz {
        Some(Clock::Int(mhz)) => d.set_item(intern!(py, "clockMegahertz"), mhz)?,
        Some(Clock::Float(mhz)) => d.set_item(intern!(py, "clockMegahertz"), mhz)?,
        None => {}
    }
    if let Some(flags) = &cpu.flags {
        d.set_item(intern!(py, "flags"), PyList::new(py, flags)?)?;
    }
    if let Some(count) = cpu.count {
        d.set_item(intern!(py, "count"), int(py, count)?)?;
    }
    Ok(d)
}

// --- input: a parsed document read into the model --------------------------------------------

/// A model value read from a Python value: `Err` with what was found when it is of another
/// type (an exact type match is needed: a `str` subclass is not a string, `bool` not an `int`).
trait FromPy: Sized {
    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>>;
}

/// The JSON type name of a Python value (Python's own type name for non-JSON types).
fn found(value: &Bound<'_, PyAny>) -> PyResult<Found> {
    Ok(if value.is_none() {
        Found::Null
    } else if value.is_instance_of::<PyBool>() {
        Found::Boolean
    } else if value.is_instance_of::<PyInt>() {
        Found::Integer
    } else if value.is_instance_of::<PyFloat>() {
        Found::Number
    } else if value.is_instance_of::<PyString>() {
        Found::String
    } else if value.is_instance_of::<PyList>() {
        Found::Array
    } else if value.is_instance_of::<PyDict>() {
        Found::Object
    } else {
        Found::Other(value.get_type().name()?.to_string())
    })
}

/// An object's field: absent when the key is missing or its value is None.
fn field<T: FromPy>(object: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> PyResult<Field<T>> {
    let Some(value) = object.get_item(key)? else {
        return Ok(Field::Absent);
    };
    if value.is_none() {
        return Ok(Field::Absent);
    }
    Ok(match T::from_py(&value)? {
        Ok(value) => Field::Value(value),
        Err(found) => Field::Wrong(found),
    })
}

impl FromPy for Text<'static> {
    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>> {
        let Ok(text) = value.cast_exact::<PyString>() else {
            return found(value).map(Err);
        };
        Ok(match text.to_str() {
            Ok(text) => Ok(Cow::Owned(text.to_owned())),
            Err(_) => Err(Found::Other("string with a lone surrogate".into())),
        })
    }
}

impl FromPy for Int {
    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>> {
        if !value.is_exact_instance_of::<PyInt>() {
            return found(value).map(Err);
        }
        let in_range = |n: &i128| (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(n);
        Ok(match value.extract::<i128>() {
            Ok(n) if in_range(&n) => Ok(n),
            _ => Err(Found::Other("integer beyond 64 bits".into())),
        })
    }
}

impl FromPy for bool {
    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>> {
        if value.is_exact_instance_of::<PyBool>() {
            value.is_truthy().map(Ok)
        } else {
            found(value).map(Err)
        }
    }
}

impl<T: FromPy> FromPy for Vec<Item<T>> {
    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>> {
        let Ok(items) = value.cast_exact::<PyList>() else {
            return found(value).map(Err);
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            out.push(if item.is_none() {
                Item::Wrong(Found::Null)
            } else {
                match T::from_py(&item)? {
                    Ok(value) => Item::Value(value),
                    Err(found) => Item::Wrong(found),
                }
            });
        }
        Ok(Ok(out))
    }
}

impl FromPy for Vec<Tlv<'static>> {
    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>> {
        let Ok(items) = value.cast_exact::<PyList>() else {
            return found(value).map(Err);
        };
        items
            .iter()
            .map(|item| tlv(&item))
            .collect::<PyResult<_>>()
            .map(Ok)
    }
}

/// An LLDP item: a list of an int and a str is a pair. A value that is not hex is unreadable
/// whatever else it holds, so one with lone surrogates is kept with them replaced.
fn tlv(item: &Bound<'_, PyAny>) -> PyResult<Tlv<'static>> {
    let pair = match item.cast_exact::<PyList>() {
        Ok(pair) if pair.len() == 2 => pair,
        _ => return Ok(Tlv::NotPair),
    };
    let (kind, value) = (pair.get_item(0)?, pair.get_item(1)?);
    let value_text = value.cast_exact::<PyString>().ok();
    if !kind.is_exact_instance_of::<PyInt>() || value_text.is_none() {
        let kind = if kind.is_exact_instance_of::<PyInt>() {
            Found::Integer
        } else {
            found(&kind)?
        };
        let value = if value_text.is_some() {
            Found::String
        } else {
            found(&value)?
        };
        return Ok(Tlv::WrongTypes(kind, value));
    }
    // An int beyond 128 bits is no TLV type the conversion reads.
    let kind = kind
        .extract::<i128>()
        .map_or(TlvType::Other, TlvType::from_int);
    let text = value_text
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Tlv::Pair(kind, Cow::Owned(text)))
}

/// A section of the inventory: an exact dict, each field read by its key.
macro_rules! sections {
    ($($name:ident $(<$lt:lifetime>)? { $($field:ident),* $(,)? })*) => {
        $(impl FromPy for $name $(<$lt>)? {
            fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Result<Self, Found>> {
                let Ok(object) = value.cast_exact::<PyDict>() else {
                    return found(value).map(Err);
                };
                let py = object.py();
                Ok(Ok($name {
                    $($field: field(object, intern!(py, stringify!($field)))?,)*
                }))
            }
        })*
    };
}

sections! {
    Inventory<'static> { interfaces, disks, cpu, memory, system_vendor, boot, hostname }
    Interface<'static> {
        name, mac_address, ipv4_address, ipv6_address, vendor, product, speed_mbps, lldp,
        pci_address,
    }
    Disk<'static> {
        name, by_path, rotational, size, vendor, model, serial, wwn, wwn_vendor_extension,
        wwn_with_extension, hctl,
    }
    Cpu<'static> { architecture, model_name, frequency, count, flags }
    Memory { physical_mb }
    SystemVendor<'static> { manufacturer, product_name, serial_number, firmware }
    Firmware<'static> { vendor, version, build_date, date }
    Boot<'static> { pxe_interface }
}
