//! `GET /payments`, `POST /payments/redeem` and the `/channels` routes: the node's payments and
//! the channels it pays through.

use alloy::primitives::{Address, B256, U256};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{JsonBody, Path, address, required};
use super::openapi::error_responses;
use crate::api::{
    Amount, ChannelChange, ChannelInfo, ChannelRedemption, FailedRedemption, OpenChannelRequest,
    PaymentsAnswer, RecoveredChannels, RedeemAnswer, TopUpRequest, TransactionInfo,
};
use crate::context::NodeContext;
use crate::error::{Error, ErrorCode};
use crate::payments::chain::Mined;
use crate::payments::payer::OutgoingChannel;
use crate::payments::{Payments, amount, payee};

error_responses!(
    /// Errors of reading payments.
    SummaryErrors: TargetUnreachable, TargetError, StorageFailure,
);
error_responses!(
    /// Errors of a channel transaction (open, top up, close).
    ChannelErrors: InvalidJson, MissingField, InvalidField, PayloadTooLarge, PaymentsOff,
    ChannelNotFound, ChannelStateConflict, InsufficientFunds, TargetUnreachable, TargetMismatch, TargetTimeout,
    TargetError, StorageFailure,
);
error_responses!(
    /// Errors of reading one channel.
    ShowErrors: InvalidField, PaymentsOff, ChannelNotFound,
);
error_responses!(
    /// Errors of redeeming and recovering.
    ChainErrors: PaymentsOff, TargetUnreachable, TargetError, StorageFailure,
);

/// Returns `amount` in wei, or why it cannot be used as `field`.
fn wei(amount: &Amount, field: &str) -> Result<U256, Error> {
    // JavaScript writes large integers with an exponent (1e18); integral values up to 2^53 are
    // exact there, larger ones belong in a string.
    const EXACT_IN_DOUBLES: f64 = 9_007_199_254_740_992.0;
    let wei = match amount {
        Amount::Wei(number) => match (number.as_u64(), number.as_f64()) {
            (Some(wei), _) => U256::from(wei),
            (None, Some(wei)) if wei.fract() == 0.0 && (0.0..=EXACT_IN_DOUBLES).contains(&wei) => {
                U256::from(wei as u64)
            }
            _ => {
                return Err(Error::invalid_field(
                    field,
                    "must be a whole number of wei up to 2^53, or a string such as \"0.01eth\"",
                ));
            }
        },
        Amount::Text(text) => {
            amount::parse_amount(text).map_err(|problem| Error::invalid_field(field, problem))?
        }
    };
    if wei.is_zero() {
        return Err(Error::invalid_field(field, "must be greater than 0"));
    }
    Ok(wei)
}

fn enabled(context: &NodeContext) -> Result<&Payments, Error> {
    context.payments.as_ref().ok_or_else(|| {
        Error::new(
            ErrorCode::PaymentsOff,
            "payments are off on this node; turn them on with `payments.enabled` (see docs/configuration.md)",
        )
    })
}

fn channel_id(text: &str) -> Result<B256, Error> {
    text.parse()
        .map_err(|_| Error::invalid_field("channel_id", "must be 32 bytes of 0x-prefixed hex"))
}

fn changed(channel: &OutgoingChannel, mined: &Mined) -> ChannelChange {
    ChannelChange {
        channel: channel.into(),
        transaction: TransactionInfo {
            tx: mined.tx.to_string(),
            gas_used: mined.gas_used,
            fee_wei: mined.fee.to_string(),
        },
    }
}

/// The node's payments: settings, balance, channels both ways, spent, earned, pending;
/// `{"enabled": false}` when off.
#[utoipa::path(
    get,
    path = "/payments",
    tag = "payments",
    responses((status = 200, description = "The node's payments", body = PaymentsAnswer), SummaryErrors),
)]
pub async fn summary(State(context): State<NodeContext>) -> Result<Response, Error> {
    let summary = match &context.payments {
        Some(payments) => payments.summary().await?,
        None => PaymentsAnswer::default(),
    };
    Ok(axum::Json(summary).into_response())
}

/// Redeems every unredeemed voucher now.
#[utoipa::path(
    post,
    path = "/payments/redeem",
    tag = "payments",
    responses((status = 200, description = "What was redeemed and what failed", body = RedeemAnswer), ChainErrors),
)]
pub async fn redeem(State(context): State<NodeContext>) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let outcomes = payments.payee.redeem_all().await;
    payee::log_failures(&outcomes);
    let mut answer = RedeemAnswer {
        redeemed: Vec::new(),
        failed: Vec::new(),
    };
    for outcome in outcomes {
        match outcome {
            Ok((channel, redemption)) => answer.redeemed.push(ChannelRedemption {
                channel_id: channel.to_string(),
                redemption: (&redemption).into(),
            }),
            Err((channel, error)) => answer.failed.push(FailedRedemption {
                channel_id: channel.to_string(),
                code: error.code,
                message: error.message,
            }),
        }
    }
    Ok(axum::Json(answer).into_response())
}

/// Opens a channel to a provider, named by its node's address (`target`) or its node ID.
#[utoipa::path(
    post,
    path = "/channels",
    tag = "payments",
    request_body = OpenChannelRequest,
    responses((status = 201, description = "The channel is open", body = ChannelChange), ChannelErrors),
)]
pub async fn open(
    State(context): State<NodeContext>,
    JsonBody(request): JsonBody<OpenChannelRequest>,
) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let deposit = wei(&required(request.deposit, "deposit")?, "deposit")?;
    let provider: Address = match (address(request.target, "target")?, request.provider) {
        (Some(target), None) => {
            let target = context.peers.resolve(&target).await?;
            let info = payments.payer.target_info(&target).await?;
            if info.payment_terms.is_none() {
                return Err(Error::new(
                    ErrorCode::PaymentsOff,
                    format!("target {target} does not take payments; it needs no channel"),
                ));
            }
            context.peers.node_id(&target).await?.address()
        }
        (None, Some(provider)) => provider
            .parse()
            .map_err(|_| Error::invalid_field("provider", "must be a 0x-prefixed address"))?,
        (Some(_), Some(_)) => {
            return Err(Error::invalid_field(
                "provider",
                "cannot be given together with `target`",
            ));
        }
        (None, None) => return Err(Error::missing_field("target")),
    };
    let (channel, mined) = payments.payer.open_channel(provider, deposit).await?;
    Ok((StatusCode::CREATED, axum::Json(changed(&channel, &mined))).into_response())
}

/// Finds the channels this node opened again from the chain, after it lost its database.
#[utoipa::path(
    post,
    path = "/channels/recover",
    tag = "payments",
    responses((status = 200, description = "The channels found on the chain", body = RecoveredChannels), ChainErrors),
)]
pub async fn recover(State(context): State<NodeContext>) -> Result<Response, Error> {
    let recovered = enabled(&context)?.payer.recover().await?;
    Ok(axum::Json(RecoveredChannels {
        recovered: recovered.iter().map(Into::into).collect(),
    })
    .into_response())
}

/// One channel this node pays through.
#[utoipa::path(
    get,
    path = "/channels/{id}",
    tag = "payments",
    params(("id" = String, Path, description = "The channel's ID (32 bytes, 0x-prefixed hex)")),
    responses((status = 200, description = "The channel", body = ChannelInfo), ShowErrors),
)]
pub async fn show(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let channel = enabled(&context)?.payer.channel(channel_id(&id)?)?;
    Ok(axum::Json(ChannelInfo::from(&channel)).into_response())
}

/// Adds to a channel's deposit.
#[utoipa::path(
    post,
    path = "/channels/{id}/topup",
    tag = "payments",
    params(("id" = String, Path, description = "The channel's ID (32 bytes, 0x-prefixed hex)")),
    request_body = TopUpRequest,
    responses((status = 200, description = "The deposit is larger", body = ChannelChange), ChannelErrors),
)]
pub async fn top_up(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<TopUpRequest>,
) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let amount = wei(&required(request.amount, "amount")?, "amount")?;
    let (channel, mined) = payments.payer.top_up(channel_id(&id)?, amount).await?;
    Ok(axum::Json(changed(&channel, &mined)).into_response())
}

/// Asks to close a channel, or closes it once the challenge period is over.
#[utoipa::path(
    post,
    path = "/channels/{id}/close",
    tag = "payments",
    params(("id" = String, Path, description = "The channel's ID (32 bytes, 0x-prefixed hex)")),
    responses((status = 200, description = "Closing asked for, or the channel closed and refunded", body = ChannelChange), ChannelErrors),
)]
pub async fn close(
    State(context): State<NodeContext>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let payments = enabled(&context)?;
    let (channel, mined) = payments.payer.close(channel_id(&id)?).await?;
    Ok(axum::Json(changed(&channel, &mined)).into_response())
}
