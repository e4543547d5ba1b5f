"""The learner's side of SecAgg+: Flower's ``secaggplus_mod`` in front of the FLOps ClientApp.

Messages of a SecAgg+ round (they carry Flower's ``secaggplus`` config record) go through ``secaggplus_mod``,
which runs the key exchange, masks the update and answers the unmasking; the training itself is the FLOps
ClientApp's ``train`` (FitIns/FitRes, the legacy format the workflow speaks, translated to the FLOps train
message and back, with the node's name in the metrics). Every other message passes through unchanged.
See ``services.aggregator.secure_aggregation``.
"""

from __future__ import annotations

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from services.fl_runtime import protocol as p
from services.fl_runtime.npy_bytes import NUMPY_PARSING, read_npy


def secure_aggregation_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Learner side: SecAgg+ messages go through Flower's ``secaggplus_mod``; the FLOps ClientApp trains."""
    if RECORD_KEY_CONFIGS not in message.content.config_records:
        return call_next(message, context)
    with NUMPY_PARSING:  # secaggplus_mod reads the masked update with np.load (see npy_bytes)
        return secaggplus_mod(message, context, _fit_through_flops_app(call_next))


def _fit_through_flops_app(call_next: ClientAppCallable) -> ClientAppCallable:
    def fit(message: Message, context: Context) -> Message:
        fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
        request = RecordDict(
            {
                p.ARRAYS: p.to_arrays([read_npy(tensor) for tensor in fitins.parameters.tensors]),
                p.CONFIG: ConfigRecord(dict(fitins.config)),  # type: ignore[arg-type]
            }
        )
        reply = call_next(
            Message(request, dst_node_id=message.metadata.dst_node_id, message_type=message.metadata.message_type),
            context,
        )
        metrics = dict(reply.content.metric_records[p.METRICS])
        examples = int(metrics.pop(p.NUM_EXAMPLES))  # type: ignore[arg-type]
        info = reply.content.config_records.get(p.INFO)
        node = str(info.get(p.NODE, "")) if info is not None else str(context.node_config.get(p.NODE_NAME_KEY, ""))
        fitres = FitRes(
            Status(Code.OK, "ok"),
            ndarrays_to_parameters(p.from_arrays(reply.content.array_records[p.ARRAYS])),
            examples,
            {**{key: value for key, value in metrics.items() if isinstance(value, int | float)}, p.NODE: node},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    return fit
