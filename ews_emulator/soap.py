"""SOAP envelope, response-message and fault builders shared by all operations.

Operation handlers (items/folders here, sync_ops/notify_ops) build their <m:XResponse> with
``new_response(op)`` and add one message per input with ``ok_message``/``error_message``; the
server wraps the result with ``envelope`` and turns whole-request errors into ``fault``.
"""

from __future__ import annotations

from lxml import etree

from .registry import NS_M, NS_SOAP, NS_T, EwsError, m, t

NS_E = "http://schemas.microsoft.com/exchange/services/2006/errors"
RESPONSE_NSMAP = {"m": NS_M, "t": NS_T}
# Exchange 2016 CU era build; Version is what such servers report (exchangelib keeps its request
# version when the server reports this kind of string).
SERVER_VERSION = {"MajorVersion": "15", "MinorVersion": "1", "MajorBuildNumber": "2507",
                  "MinorBuildNumber": "6", "Version": "V2017_07_11"}
_ENVELOPE_HEAD = (
    '<?xml version="1.0" encoding="utf-8"?>'
    f'<s:Envelope xmlns:s="{NS_SOAP}"><s:Header>'
    f'<h:ServerVersionInfo xmlns:h="{NS_T}" xmlns="{NS_T}" '
    + " ".join(f'{k}="{v}"' for k, v in SERVER_VERSION.items())
    + "/></s:Header><s:Body>"
).encode()
_ENVELOPE_TAIL = b"</s:Body></s:Envelope>"


def new_response(op: str) -> tuple[etree._Element, etree._Element]:
    """(<m:{op}Response>, its <m:ResponseMessages>)."""
    resp = etree.Element(m(f"{op}Response"), nsmap=RESPONSE_NSMAP)
    return resp, etree.SubElement(resp, m("ResponseMessages"))


def ok_message(messages: etree._Element, op: str, response_class: str = "Success") -> etree._Element:
    """Append a <m:{op}ResponseMessage ResponseClass="Success"> with ResponseCode NoError."""
    msg = etree.SubElement(messages, m(f"{op}ResponseMessage"), ResponseClass=response_class)
    etree.SubElement(msg, m("ResponseCode")).text = "NoError"
    return msg


def error_message(messages: etree._Element, op: str, err: EwsError) -> etree._Element:
    """Append an error response message with MessageText, ResponseCode and MessageXml."""
    msg = etree.SubElement(messages, m(f"{op}ResponseMessage"), ResponseClass="Error")
    etree.SubElement(msg, m("MessageText")).text = err.text
    etree.SubElement(msg, m("ResponseCode")).text = err.code
    etree.SubElement(msg, m("DescriptiveLinkKey")).text = "0"
    if err.message_xml:
        mx = etree.SubElement(msg, m("MessageXml"))
        for name, value in err.message_xml.items():
            etree.SubElement(mx, t("Value"), Name=name).text = str(value)
    return msg


def require(parent: etree._Element, tag: str) -> etree._Element:
    """The child ``tag`` (Clark name) of a request element, or ErrorSchemaValidation (which the
    server sends as a SOAP fault, as Exchange does for an invalid request)."""
    child = parent.find(tag)
    if child is None:
        local = tag.rsplit("}", 1)[-1]
        raise EwsError("ErrorSchemaValidation",
                       f"The request failed schema validation: {etree.QName(parent).localname} has no {local}.")
    return child


def envelope(body_elem: etree._Element) -> bytes:
    """A complete response envelope (with ServerVersionInfo) around one body element."""
    return _ENVELOPE_HEAD + etree.tostring(body_elem, encoding="utf-8") + _ENVELOPE_TAIL


def fault(err: EwsError, faultcode_prefix: str = "a") -> bytes:
    """A SOAP 1.1 fault as Exchange sends it for whole-request errors (server busy,
    impersonation denied, invalid server version, schema validation)."""
    env = etree.Element(f"{{{NS_SOAP}}}Envelope", nsmap={"s": NS_SOAP})
    body = etree.SubElement(env, f"{{{NS_SOAP}}}Body")
    f = etree.SubElement(body, f"{{{NS_SOAP}}}Fault")
    code = etree.SubElement(f, "faultcode", nsmap={faultcode_prefix: NS_T})
    code.text = f"{faultcode_prefix}:{err.code}"
    fs = etree.SubElement(f, "faultstring")
    fs.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    fs.text = err.text
    detail = etree.SubElement(f, "detail")
    etree.SubElement(detail, f"{{{NS_E}}}ResponseCode", nsmap={"e": NS_E}).text = err.code
    etree.SubElement(detail, f"{{{NS_E}}}Message", nsmap={"e": NS_E}).text = err.text
    if err.message_xml:
        mx = etree.SubElement(detail, t("MessageXml"), nsmap={"t": NS_T})
        for name, value in err.message_xml.items():
            etree.SubElement(mx, t("Value"), Name=name).text = str(value)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")
